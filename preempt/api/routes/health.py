"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from preempt.api.deps import MetricsDep, StoreDep
from preempt.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz():
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Redis answers and at least one worker is alive",
            responses={503: {"model": Readiness, "description": "Redis does not answer, or no worker is alive"}})
async def readyz(store: StoreDep):
    try:
        await run_in_threadpool(store.r.ping)
        workers = await run_in_threadpool(store.workers)
    except Exception as e:  # noqa: BLE001 - any Redis failure means "not ready"
        return JSONResponse(Readiness(status="unready", detail=f"redis: {type(e).__name__}").model_dump(),
                            status_code=503)
    if not workers:
        return JSONResponse(Readiness(status="unready", detail="no worker is alive").model_dump(), status_code=503)
    return Readiness(status="ready", workers=sorted(workers))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "the Prometheus text format"}})
async def prometheus(metrics: MetricsDep):
    body, content_type = await run_in_threadpool(metrics.render)
    return Response(body, media_type=content_type)
