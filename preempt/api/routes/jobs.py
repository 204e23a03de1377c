"""``/v1/jobs/{id}``: a job's status and report, its result, its cancellation or deletion."""

from __future__ import annotations

from typing import Union

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from preempt.api import errors
from preempt.api.deps import JobDep, StoreDep, get_job
from preempt.api.submit import job_view
from preempt.schemas import Deleted, Job
from preempt.store import ENDED

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_FOUND = errors.documented(errors.JobNotFound, errors.InvalidParameter, errors.StoreUnavailable)


@router.get("/{job_id}", response_model=Job, summary="Status, progress and report of a job", responses=NOT_FOUND)
async def read_job(job: JobDep, store: StoreDep):
    return await run_in_threadpool(job_view, job, store)


@router.get("/{job_id}/result", summary="The job's PNG", response_class=Response,
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the protected (or, for an attack, the adversarial) PNG"},
                       **errors.documented(errors.JobNotFound, errors.NoResult, errors.NotReady,
                                           errors.InvalidParameter, errors.StoreUnavailable)})
async def read_result(job: JobDep, store: StoreDep):
    if job["status"] != "succeeded":
        raise errors.NotReady(f"job is {job['status']}; the result exists once it has succeeded")
    png = await run_in_threadpool(store.result, job["job_id"])
    if png is None:
        raise errors.NoResult("this job has no image result, or it expired")
    return Response(png, media_type="image/png",
                    headers={"Content-Disposition": f'inline; filename="{job["job_id"]}.png"'})


@router.delete("/{job_id}", response_model=Union[Job, Deleted], responses=NOT_FOUND,
               summary="Cancel a job (answers it, cancelled), or delete an ended one and its result")
async def delete_job(job: JobDep, store: StoreDep):
    job_id = job["job_id"]
    if job["status"] not in ENDED:
        await run_in_threadpool(lambda: store.end(job_id, "cancelled", error="cancelled by request"))
        return await run_in_threadpool(job_view, await get_job(job_id, store), store)
    await run_in_threadpool(store.delete, job_id)
    return Deleted(job_id=job_id)
