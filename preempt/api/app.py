"""The HTTP API (FastAPI). It never imports torch: it checks uploads, stores jobs, enqueues their ids.

Routes (one router per resource in :mod:`preempt.api.routes`; OpenAPI at ``/docs``):

* ``POST /v1/robustify`` (``routes/robustify.py``): multipart ``file`` + the fields of a
  :class:`~preempt.request.RobustifyRequest` -> ``202 {"job_id", "status_url", "result_url"}``;
  ``?wait=SECONDS`` (at most 60) answers ``200`` with the job if it ends in that time.
* ``POST /v1/attack``, ``POST /v1/certify`` (``routes/evaluation.py``): grey-box (and white-box) attack,
  smoothed PREDICT + CERTIFY.
* ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/result`` (image/png), ``DELETE /v1/jobs/{id}`` (``routes/jobs.py``).
* ``GET /``: the web page (``preempt/web``: upload, watch, compare, attack), its files under ``/ui``.
* ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``; the ``/v1`` routes answer
  without the prefix too (``POST /robustify``), following the current version.

Every error is JSON ``{"error": CODE, "detail": MESSAGE}`` (:mod:`preempt.api.errors`, one type per
failure). An upload is checked completely (format, pixel count from the header, full decode) before
a job exists, so a worker never sees a file the API would refuse.
"""

from __future__ import annotations

import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline

from preempt.api import errors
from preempt.api.metrics import Metrics
from preempt.api.ratelimit import RateLimiter
from preempt.keys import KeyStore
from preempt.api.routes import api_router, page
from preempt.queue import enqueue, make_celery
from preempt.registry import Catalog
from preempt.settings import Settings
from preempt.store import JobStore, redis_client


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings()
    # FastAPIOffline serves /docs and /redoc with the Swagger UI and ReDoc files of its package, not a CDN.
    app = FastAPIOffline(title="Preempt", version="1.0",
                         description="Preemptive image robustification against man-in-the-middle adversarial "
                                     "attacks. docs/api.md in the repository describes every route.")
    store = JobStore(redis_client(settings.require_url()), settings.result_ttl)
    celery_app = make_celery(settings)
    app.state.settings, app.state.store = settings, store
    app.state.enqueue = lambda job_id: enqueue(celery_app, job_id, settings.queue)
    app.state.metrics = metrics = Metrics(store)
    app.state.keys = KeyStore(store.r)
    app.state.ratelimiter = RateLimiter(settings.require_url())
    # The cards are read again only when a model is added or removed (preempt models add/remove).
    app.state.catalog = Catalog()
    errors.install(app)
    app.include_router(api_router())
    page.mount(app)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - the API answers a JSON 500 and lives on
            metrics.observe(request, 500, time.perf_counter() - start)
            return errors.Internal("internal error; see the API log").response()
        metrics.observe(request, response.status_code, time.perf_counter() - start)
        return response

    app.add_middleware(errors.BodyLimit, limit=settings.max_upload_bytes + 1024 * 1024)
    return app
