"""Turning a checked request and its upload into a queued job, and a job into its public JSON."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Callable, Optional

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from preempt.api.errors import QueueUnavailable
from preempt.api.metrics import Metrics
from preempt.imagefile import ImageInfo
from preempt.request import REQUESTS
from preempt.store import ENDED, JobStore, new_job_id

KINDS = {cls: kind for kind, cls in REQUESTS.items()}


async def submit(store: JobStore, enqueue: Callable[[str], None], metrics: Metrics, request, data: bytes,
                 image: ImageInfo, extra: Optional[dict] = None, batch: str = "", wait: float = 0.0) -> JSONResponse:
    """Store the job and send it to the workers; ``202`` with its URLs, or ``200`` with the job if it ends
    within ``wait`` seconds."""
    kind, job_id = KINDS[type(request)], new_job_id()

    def create():
        store.create(job_id, kind, request.to_json(), data, extra, batch, image=asdict(image))
        try:
            enqueue(job_id)
        except Exception as e:  # noqa: BLE001 - the broker is down: the job must not stay queued for nobody
            store.end(job_id, "failed", error=f"could not enqueue: {e}")
            raise QueueUnavailable(f"the job queue is unavailable ({type(e).__name__})") from e

    await run_in_threadpool(create)
    metrics.submitted(kind)
    body = {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}",
            "result_url": f"/v1/jobs/{job_id}/result" if kind != "certify" else None}
    if wait > 0:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = await run_in_threadpool(store.get, job_id)
            if job is not None and job["status"] in ENDED:
                return JSONResponse(job_view(job), status_code=200)
            await asyncio.sleep(0.1)
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})


def job_view(job: dict) -> dict:
    """The public JSON of a job."""
    started, finished = job.get("started"), job.get("finished")
    view = {
        "job_id": job["job_id"], "kind": job["kind"], "status": job["status"],
        "progress": {"iteration": job["iteration"], "total": job["total"], "loss": job.get("loss")},
        "error": job.get("error"),
        "result_url": f"/v1/jobs/{job['job_id']}/result" if job["kind"] != "certify" else None,
        "timings": {
            "created": job["created"], "started": started, "finished": finished,
            "queued_seconds": round((started or finished or time.time()) - job["created"], 3),
            "run_seconds": round((finished or time.time()) - started, 3) if started else None,
        },
        "attempts": job["attempts"],
        "params": json.loads(job["request"]),
    }
    if "report" in job:
        view["report"] = job["report"]
    return view
