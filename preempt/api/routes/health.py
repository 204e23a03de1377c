"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from preempt.api.deps import MetricsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and at least one worker is alive")
async def readyz(store: StoreDep):
    try:
        await run_in_threadpool(store.r.ping)
        workers = await run_in_threadpool(store.workers)
    except Exception as e:  # noqa: BLE001 - any Redis failure means "not ready"
        return JSONResponse({"status": "unready", "detail": f"redis: {type(e).__name__}: {e}"}, status_code=503)
    if not workers:
        return JSONResponse({"status": "unready", "detail": "no worker is alive"}, status_code=503)
    return {"status": "ready", "workers": sorted(workers)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(metrics: MetricsDep):
    body, content_type = await run_in_threadpool(metrics.render)
    return Response(body, media_type=content_type)
