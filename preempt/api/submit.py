"""Turning a checked request and its upload into a queued job, and a job into its public JSON."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from preempt.api import errors
from preempt.imagefile import ImageInfo
from preempt.request import REQUESTS
from preempt.schemas import Job, Progress, Timings, utc
from preempt.store import ENDED, JobStore, new_job_id

if TYPE_CHECKING:
    from preempt.api.deps import Submitter

KINDS = {cls: kind for kind, cls in REQUESTS.items()}
SUBMIT_RESPONSES = {
    200: {"model": Job, "description": "the job ended within the wait asked for (`?wait=N` or `Prefer: wait=N`)"},
    **errors.documented(errors.CorruptImage, errors.BodyTooLarge, errors.ImageTooLarge, errors.UnsupportedImage,
                        errors.InvalidParameter, errors.InvalidRequest, errors.QueueUnavailable,
                        errors.StoreUnavailable, errors.StoreFull),
}


async def submit(via: "Submitter", request, data: bytes, image: ImageInfo, extra: Optional[dict] = None,
                 batch: str = "", wait: float = 0.0) -> JSONResponse:
    """Store the job and send it to the workers; ``202`` with its URLs, or ``200`` with the job if it ends
    within ``wait`` seconds."""
    store, enqueue, metrics = via.store, via.enqueue, via.metrics
    kind, job_id = KINDS[type(request)], new_job_id()

    def create():
        store.create(job_id, kind, request.to_json(), data, extra, batch, image=asdict(image))
        try:
            enqueue(job_id)
        except Exception as e:  # noqa: BLE001 - the broker is down: the job must not stay queued for nobody
            store.end(job_id, "failed", error=f"could not enqueue: {e}")
            raise errors.QueueUnavailable(f"the job queue is unavailable ({type(e).__name__})") from e

    await run_in_threadpool(create)
    metrics.submitted(kind)
    body = {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}",
            "result_url": f"/v1/jobs/{job_id}/result" if kind != "certify" else None}
    headers = {"Location": body["status_url"]}
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
    started, finished, created = job.get("started"), job.get("finished"), job["created"]
    now = time.time()
    return Job(
        job_id=job["job_id"], kind=job["kind"], status=job["status"],
        queue_position=store.queue_position(job["job_id"]) if job["status"] == "queued" else None,
        progress=Progress(iteration=job["iteration"], total=job["total"], loss=job.get("loss")),
        error=job.get("error"),
        result_url=f"/v1/jobs/{job['job_id']}/result" if job["kind"] != "certify" else None,
        timings=Timings(created=utc(created), started=utc(started), finished=utc(finished),
                        queued_seconds=round(max((started or finished or now) - created, 0.0), 3),
                        run_seconds=round(max((finished or now) - started, 0.0), 3) if started else None),
        attempts=job["attempts"], params=json.loads(job["request"]), report=job.get("report"))
