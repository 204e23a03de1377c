"""``/v1/jobs/{id}``: a job's status and report, its result, its cancellation or deletion."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from preempt.api.deps import JobDep, StoreDep, get_job
from preempt.api.errors import NoResult, NotReady
from preempt.api.submit import job_view
from preempt.store import ENDED

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", summary="Status, progress and report of a job")
async def read_job(job: JobDep):
    return job_view(job)


@router.get("/{job_id}/result", summary="The job's PNG", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def read_result(job: JobDep, store: StoreDep):
    if job["status"] != "succeeded":
        raise NotReady(f"job is {job['status']}; the result exists once it has succeeded")
    png = await run_in_threadpool(store.result, job["job_id"])
    if png is None:
        raise NoResult("this job has no image result, or it expired")
    return Response(png, media_type="image/png",
                    headers={"Content-Disposition": f'inline; filename="{job["job_id"]}.png"'})


@router.delete("/{job_id}", summary="Cancel a job, or delete an ended one and its result")
async def delete_job(job: JobDep, store: StoreDep):
    job_id = job["job_id"]
    if job["status"] not in ENDED:
        await run_in_threadpool(lambda: store.end(job_id, "cancelled", error="cancelled by request"))
        return job_view(await get_job(job_id, store))
    await run_in_threadpool(store.delete, job_id)
    return {"job_id": job_id, "deleted": True}
