"""``/v1/jobs/{id}``: a job's status and report, its result, its cancellation or deletion."""

from __future__ import annotations

from typing import Annotated, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from preempt.api import errors
from preempt.api.deps import CallerDep, JobDep, StoreDep
from preempt.api.submit import job_view
from preempt.schemas import Deleted, Job, JobList, JobStatus
from preempt.store import ENDED

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_FOUND = errors.documented(errors.JobNotFound, errors.Unauthorized, errors.Forbidden, errors.InvalidParameter,
                              errors.StoreUnavailable)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Optional[JobStatus] = Field(None, description="only jobs in this status")
    cursor: Optional[str] = Field(None, pattern=r"^[0-9]{1,9}$", description="from a previous page's next_cursor")
    limit: int = Field(50, ge=1, le=500)


@router.get("", response_model=JobList, summary="The caller's jobs, newest first (status filter, pages)",
            responses=errors.documented(errors.Unauthorized, errors.Forbidden, errors.InvalidParameter,
                                        errors.StoreUnavailable))
async def list_jobs(query: Annotated[ListQuery, Query()], store: StoreDep, caller: CallerDep):
    def page():
        offset, jobs = int(query.cursor or 0), []
        while len(jobs) < query.limit:
            ids = store.jobs_of(caller.name, offset, query.limit)
            if not ids:
                return jobs, None
            offset += len(ids)
            for job in filter(None, map(store.get, ids)):
                if query.status is None or job["status"] == query.status:
                    jobs.append(job_view(job, store))
        return jobs, str(offset)

    jobs, cursor = await run_in_threadpool(page)
    return JobList(jobs=jobs, next_cursor=cursor)


@router.get("/{job_id}", response_model=Job, summary="Status, progress and report of a job", responses=NOT_FOUND)
async def read_job(job: JobDep, store: StoreDep):
    return await run_in_threadpool(job_view, job, store)


@router.get("/{job_id}/result", summary="The job's image", response_class=Response,
            responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                         "image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the protected (or, for an attack, the adversarial) image: PNG, or JPEG "
                                            "when the job asked for format jpeg"},
                       **errors.documented(errors.JobNotFound, errors.NoResult, errors.NotReady, errors.Unauthorized,
                                           errors.Forbidden, errors.InvalidParameter, errors.StoreUnavailable)})
async def read_result(job: JobDep, store: StoreDep):
    if job["status"] != "succeeded":
        raise errors.NotReady(f"job is {job['status']}; the result exists once it has succeeded")
    data = await run_in_threadpool(store.result, job["job_id"])
    if data is None:
        raise errors.NoResult("this job has no image result, or it expired")
    jpeg = data[:3] == b"\xff\xd8\xff"
    return Response(data, media_type="image/jpeg" if jpeg else "image/png",
                    headers={"Content-Disposition": f'inline; filename="{job["job_id"]}.{"jpg" if jpeg else "png"}"'})


@router.delete("/{job_id}", response_model=Union[Job, Deleted], responses=NOT_FOUND,
               summary="Cancel a job (answers it, cancelled), or delete an ended one and its result")
async def delete_job(job: JobDep, store: StoreDep):
    job_id = job["job_id"]
    if job["status"] not in ENDED:
        await run_in_threadpool(lambda: store.end(job_id, "cancelled", error="cancelled by request"))
        return await run_in_threadpool(job_view, await run_in_threadpool(store.get, job_id), store)
    await run_in_threadpool(store.delete, job_id)
    return Deleted(job_id=job_id)
