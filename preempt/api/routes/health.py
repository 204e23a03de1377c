"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from preempt.api import errors
from preempt.api.deps import MetricsDep, SettingsDep, StoreDep, require_admin
from preempt.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz():
    return Health()


@router.get("/readyz", response_model=Readiness,
            summary="Redis answers, a worker is alive, and the workers take the jobs that wait",
            responses={503: {"model": Readiness, "description": "Redis does not answer, no worker is alive, or jobs "
                                                                "wait while every worker is idle"}})
async def readyz(store: StoreDep, settings: SettingsDep):
    def look():
        store.r.ping()
        return store.workers(), store.oldest_queued_age()

    try:
        workers, waited = await run_in_threadpool(look)
    except Exception as e:  # noqa: BLE001 - any Redis failure means "not ready"
        return _unready(f"redis: {type(e).__name__}")
    if not workers:
        return _unready("no worker is alive")
    if waited > settings.stall_seconds and not any(info.get("jobs") for info in workers.values()):
        return _unready(f"a job has waited {waited:.0f} s while every worker is idle: the workers are not consuming")
    return Readiness(status="ready", workers=sorted(workers))


def _unready(detail: str) -> JSONResponse:
    return JSONResponse(Readiness(status="unready", detail=detail).model_dump(), status_code=503)


@router.get("/metrics", summary="Prometheus metrics (an admin key when auth is on)", response_class=Response,
            dependencies=[Depends(require_admin)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "the Prometheus text format"},
                       **errors.documented(errors.Unauthorized, errors.Forbidden)})
async def prometheus(metrics: MetricsDep):
    body, content_type = await run_in_threadpool(metrics.render)
    return Response(body, media_type=content_type)
