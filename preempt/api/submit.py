"""Turning a checked request and its upload into a queued job, and a job into its public JSON."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional, Union

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from preempt.api import errors
from preempt.imagefile import ImageInfo
from preempt.request import REQUESTS
from preempt.schemas import Job, JobCreated
from preempt.store import ENDED, JobStore, new_job_id
from preempt.webhooks import WebhookRefused, check_url

if TYPE_CHECKING:
    from preempt.api.deps import Submitter

KINDS = {cls: kind for kind, cls in REQUESTS.items()}
SUBMIT_RESPONSES = {
    200: {"model": Union[Job, JobCreated], "description": "the job ended within the wait asked for (`?wait=N` or "
                                                         "`Prefer: wait=N`): the job; or an Idempotency-Key "
                                                         "replay: the first job's URLs"},
    **errors.documented(errors.CorruptImage, errors.Unauthorized, errors.Forbidden, errors.IdempotencyConflict,
                        errors.BodyTooLarge, errors.ImageTooLarge, errors.UnsupportedImage,
                        errors.InvalidParameter, errors.InvalidRequest, errors.RateLimited, errors.QueueUnavailable,
                        errors.StoreUnavailable, errors.StoreFull),
}


async def submit(via: "Submitter", request, data: bytes, image: ImageInfo, extra: Optional[dict] = None,
                 batch: str = "", wait: float = 0.0, callback_url: Optional[str] = None) -> JSONResponse:
    """Store the job and send it to the workers; ``202`` with its URLs, or ``200`` with the job if it ends
    within ``wait`` seconds."""
    store, enqueue, metrics, owner = via.store, via.enqueue, via.metrics, via.caller.name
    kind, job_id, request_json = KINDS[type(request)], new_job_id(), request.to_json()
    fingerprint = hashlib.sha256(request_json.encode() + (callback_url or "").encode()
                                 + hashlib.sha256(data).digest()
                                 + b"".join(hashlib.sha256(v).digest() for v in (extra or {}).values())).hexdigest()

    def create():
        if callback_url:  # resolves the host: here in the thread pool, not on the event loop
            try:
                check_url(callback_url, via.settings.webhook_allow.split(","))
            except WebhookRefused as e:
                raise errors.InvalidParameter(str(e)) from None
        if via.idempotency_key is not None:
            first = store.claim_idempotency(owner, via.idempotency_key, job_id, fingerprint)
            if first is not None:
                if first[1] != fingerprint:
                    raise errors.IdempotencyConflict(f"Idempotency-Key {via.idempotency_key!r} was used with a "
                                                     "different request")
                return first[0]
        if via.caller.max_queued and store.active_of(owner) >= via.caller.max_queued:
            metrics.refused(owner, "max_queued")
            raise errors.RateLimited(f"key {owner!r} has {via.caller.max_queued} jobs queued or running, its cap; "
                                     "retry when one ends", headers={"Retry-After": "5"})
        store.create(job_id, kind, request_json, data, extra, batch, image=asdict(image), owner=owner,
                     callback_url=callback_url or "")
        try:
            enqueue(job_id)
        except Exception as e:  # noqa: BLE001 - the broker is down: the job must not stay queued for nobody
            store.end(job_id, "failed", error=f"could not enqueue: {e}")
            raise errors.QueueUnavailable(f"the job queue is unavailable ({type(e).__name__})") from e
        return None

    replayed = await run_in_threadpool(create)
    job_id = replayed or job_id
    body = {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}",
            "result_url": f"/v1/jobs/{job_id}/result" if kind != "certify" else None}
    headers = {"Location": body["status_url"]}
    if replayed:
        return JSONResponse(body, status_code=200, headers={**headers, "Idempotent-Replayed": "true"})
    metrics.submitted(kind, owner)
    if wait > 0:
        headers["Preference-Applied"] = f"wait={wait:g}"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = await run_in_threadpool(store.get, job_id)
            if job is not None and job["status"] in ENDED:
                view = await run_in_threadpool(job_view, job, store)
                return JSONResponse(view.model_dump(mode="json"), status_code=200, headers=headers)
            await asyncio.sleep(0.1)
    return JSONResponse(body, status_code=202, headers=headers)


def job_view(job: dict, store: JobStore) -> Job:
    """The public JSON of a job (its queue position read from ``store`` while it is queued)."""
    return Job.from_record(job, store.queue_position(job["job_id"]) if job["status"] == "queued" else None)
