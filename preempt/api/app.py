"""The HTTP API (FastAPI). It never imports torch: it checks uploads, stores jobs, enqueues their ids.

Routes (under ``/v1``; OpenAPI at ``/docs``):

* ``POST /v1/robustify``: multipart ``file`` + optional ``model``, ``preset``, ``norm``,
  ``epsilon``, ``delta``, ``iterations``, ``verify``, ``retry`` -> ``202 {"job_id", "status_url", "result_url"}``;
  ``?wait=SECONDS`` (at most 60) answers ``200`` with the job if it ends in that time.
* ``POST /v1/attack``: grey-box attack of ``file`` (``attack`` pgd|aa); with ``original`` also the
  adaptive white-box attack (Algorithms 3-4). ``POST /v1/certify``: smoothed PREDICT + CERTIFY.
* ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/result`` (image/png), ``DELETE /v1/jobs/{id}``.
* ``GET /v1/models``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus).

Every error is JSON ``{"error": CODE, "detail": MESSAGE}`` with a 4xx (5xx only when Redis is
down). An upload is checked completely (format, pixel count from the header, full decode) before
a job exists, so a worker never sees a file the API would refuse.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Optional

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from preempt.api.metrics import Metrics
from preempt.core.imagefile import ImageError, open_image
from preempt.core.registry import DEFAULT_MODEL, PRESETS, model_card, registered_models
from preempt.jobs import ENDED, JobStore, Settings, enqueue, make_celery, new_job_id, redis_client

ONE_CHANNEL_MODES = ("1", "L", "LA", "I", "I;16", "F", "La")


class ApiError(Exception):
    """Answered as ``status`` with ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _bad(field: str, detail: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{field}: {detail}")


def _number(field: str, raw: Optional[str], default: Optional[float], lo: float, hi: float,
            integer: bool = False):
    if raw is None or raw == "":
        return default
    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        raise _bad(field, f"{raw!r} is not {'an integer' if integer else 'a number'}") from None
    if not math.isfinite(v) or not lo <= v <= hi or (not integer and v == 0 and lo == 0):
        raise _bad(field, f"{raw} is out of range; allowed {'[' if integer else '('}{lo:g}, {hi:g}]")
    return v


YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(field: str, raw: Optional[str]) -> bool:
    """A yes/no form field (absent or empty: no)."""
    if raw is None or raw.strip() == "":
        return False
    low = raw.strip().lower()
    if low in YES or low in NO:
        return low in YES
    raise _bad(field, f"{raw!r} is not one of true, false")


def _verify(raw: Optional[str]) -> str:
    """``verify``: the check run on the protected file: apgd (default; also true), pgd (faster, weaker) or off."""
    if raw is None or raw.strip() == "":
        return "apgd"
    low = raw.strip().lower()
    if low in ("apgd", "pgd"):
        return low
    if low in YES or low in NO:
        return "apgd" if low in YES else "off"
    raise _bad("verify", f"{raw!r} is not one of true (= apgd), apgd, pgd, false")


def _model(raw: Optional[str], cards: dict) -> str:
    name = raw or DEFAULT_MODEL
    if name not in cards:
        raise _bad("model", f"unknown model {name!r}; GET /v1/models lists them")
    return name


def _threat(card: dict, norm: Optional[str], epsilon: Optional[str], delta: Optional[str]) -> dict:
    threat = card.get("threat", {})
    norm = norm or threat.get("norm", "linf")
    if norm not in ("linf", "l2"):
        raise _bad("norm", f"{norm!r} is not linf or l2")
    default_eps = threat.get("epsilon") if threat.get("norm", "linf") == norm else None
    default_eps = default_eps or (0.1 if norm == "linf" else 1.5)
    hi = 1.0 if norm == "linf" else 1000.0
    eps = _number("epsilon", epsilon, default_eps, 0.0, hi)
    dlt = _number("delta", delta, eps, 0.0, hi)
    return {"norm": norm, "epsilon": eps, "delta": dlt}


class BodyLimit:
    """ASGI middleware: refuses bodies over ``limit`` bytes (declared or streamed) with a JSON 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = {"error": "too_large", "detail": f"request body over {self.limit} bytes"}
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await JSONResponse(too_big, status_code=413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "too_large", too_big["detail"])
            return message

        try:
            await self.app(scope, limited, send)
        except ApiError as e:
            await JSONResponse({"error": e.code, "detail": e.detail}, status_code=e.status)(scope, receive, send)


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or Settings.from_env()
    store = JobStore(redis_client(settings.require_url()), settings.result_ttl)
    celery_app = make_celery(settings)
    metrics = Metrics(store)
    # The shipped models do not change while the API runs: read their cards once, not per request.
    cards = {name: model_card(name) for name in registered_models()}
    app = FastAPI(title="Preempt", version="1.0",
                  description="Preemptive image robustification against man-in-the-middle adversarial attacks.")
    app.state.store, app.state.settings = store, settings

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.code, "detail": e.detail}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'request'}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": "http_error", "detail": str(e.detail)}, status_code=e.status_code)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - the API answers 503/500 as JSON and lives on
            metrics.observe(request, 500, time.perf_counter() - start)
            return JSONResponse({"error": "internal", "detail": "internal error; see the API log"}, status_code=500)
        metrics.observe(request, response.status_code, time.perf_counter() - start)
        return response

    async def _read_image(upload: Optional[UploadFile], field: str = "file"):
        if upload is None:
            raise ApiError(422, "invalid_request", f"{field}: an image file is required (multipart field {field!r})")
        data = await upload.read()
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, "too_large", f"{field}: {len(data)} bytes; the limit is {settings.max_upload_bytes}")

        def probe():
            img = open_image(data, settings.max_pixels)
            channels = 1 if img.mode in ONE_CHANNEL_MODES else 3
            return {"format": img.format, "width": img.size[0], "height": img.size[1], "channels": channels}

        try:
            info = await run_in_threadpool(probe)
        except ImageError as e:
            msg = str(e)
            if "pixels; the limit" in msg:
                raise ApiError(413, "too_many_pixels", f"{field}: {msg}") from None
            if msg.startswith("not an image") or msg.startswith("unsupported"):
                raise ApiError(415, "unsupported_media_type", f"{field}: {msg}") from None
            raise ApiError(400, "bad_image", f"{field}: {msg}") from None
        return data, info

    async def _submit(kind: str, params: dict, data: bytes, extra: Optional[dict] = None, batch: str = "",
                      wait: float = 0.0):
        job_id = new_job_id()

        def create():
            store.create(job_id, kind, params, data, extra, batch)
            try:
                enqueue(celery_app, job_id, settings.queue)
            except Exception as e:  # noqa: BLE001
                store.end(job_id, "failed", error=f"could not enqueue: {e}")
                raise ApiError(503, "queue_unavailable", f"the job queue is unavailable ({type(e).__name__})") from e

        await run_in_threadpool(create)
        metrics.submitted(kind)
        body = {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}",
                "result_url": f"/v1/jobs/{job_id}/result" if kind != "certify" else None}
        if wait > 0:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                job = await run_in_threadpool(store.get, job_id)
                if job is not None and job["status"] in ENDED:
                    return JSONResponse(_view(job), status_code=200)
                await asyncio.sleep(0.1)
        return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})

    @app.post("/v1/robustify", status_code=202, summary="Robustify an image (returns a job)")
    async def robustify(
        file: Optional[UploadFile] = File(None, description="PNG, JPEG or WebP"),
        model: Optional[str] = Form(None), preset: Optional[str] = Form(None), norm: Optional[str] = Form(None),
        epsilon: Optional[str] = Form(None), delta: Optional[str] = Form(None),
        iterations: Optional[str] = Form(None), verify: Optional[str] = Form(None),
        retry: Optional[str] = Form(None, description="true: robustify the image once more if the check rejects it"),
        wait: float = Query(0.0, ge=0.0, le=60.0, description="seconds to wait for the result"),
    ):
        name = _model(model, cards)
        preset = preset or "medium"
        if preset not in PRESETS:
            raise _bad("preset", f"{preset!r} is not one of {', '.join(PRESETS)}")
        params = {"model": name, "preset": preset, **_threat(cards[name], norm, epsilon, delta), **PRESETS[preset]}
        params["iterations"] = _number("iterations", iterations, params["iterations"], 1, settings.max_iterations,
                                       integer=True)
        params["verify"] = _verify(verify)
        params["retry"] = _flag("retry", retry)
        if params["retry"] and params["verify"] == "off":
            raise _bad("retry", "retry sends back the images the check rejects; it needs verify on")
        data, info = await _read_image(file)
        params["image"] = info
        batch = "|".join(str(params[k]) for k in ("model", "norm", "epsilon", "delta", "iterations", "steps",
                                                   "samples", "verify", "retry"))
        batch += f"|{info['channels']}x{info['height']}x{info['width']}"
        return await _submit("robustify", params, data, batch=batch, wait=wait)

    @app.post("/v1/attack", status_code=202, summary="Attack an image: grey-box, and white-box given the original")
    async def attack(
        file: Optional[UploadFile] = File(None, description="the image to attack (e.g. a robustified one)"),
        original: Optional[UploadFile] = File(None, description="the original, for the white-box attack"),
        model: Optional[str] = Form(None), norm: Optional[str] = Form(None), epsilon: Optional[str] = Form(None),
        attack: Optional[str] = Form(None), label: Optional[str] = Form(None),
        iterations: Optional[str] = Form(None),
        wait: float = Query(0.0, ge=0.0, le=60.0),
    ):
        name = _model(model, cards)
        atk = attack or "pgd"
        if atk not in ("pgd", "aa"):
            raise _bad("attack", f"{atk!r} is not pgd or aa")
        threat = _threat(cards[name], norm, epsilon, None)
        k = len(cards[name].get("class_names") or []) or 1000
        params = {"model": name, "norm": threat["norm"], "epsilon": threat["epsilon"], "attack": atk,
                  "label": _number("label", label, None, 0, k - 1, integer=True),
                  "iterations": _number("iterations", iterations, 100, 1, settings.max_iterations, integer=True)}
        data, info = await _read_image(file)
        extra = None
        if original is not None:
            odata, oinfo = await _read_image(original, "original")
            if (oinfo["width"], oinfo["height"]) != (info["width"], info["height"]):
                raise _bad("original", f"{oinfo['width']}x{oinfo['height']} differs from the image's "
                                       f"{info['width']}x{info['height']}")
            extra = {"original": odata}
        params["whitebox"] = extra is not None
        return await _submit("attack", params, data, extra, wait=wait)

    @app.post("/v1/certify", status_code=202, summary="Smoothed prediction and certified l2 radius")
    async def certify(
        file: Optional[UploadFile] = File(None), model: Optional[str] = Form(None),
        sigma: Optional[str] = Form(None), n0: Optional[str] = Form(None), n: Optional[str] = Form(None),
        alpha: Optional[str] = Form(None), wait: float = Query(0.0, ge=0.0, le=60.0),
    ):
        name = _model(model, cards)
        params = {"model": name, "sigma": _number("sigma", sigma, 0.25, 0.0, 10.0),
                  "n0": _number("n0", n0, 100, 1, 100_000, integer=True),
                  "n": _number("n", n, 10_000, 1, 1_000_000, integer=True),
                  "alpha": _number("alpha", alpha, 0.001, 0.0, 0.5)}
        data, _ = await _read_image(file)
        return await _submit("certify", params, data, wait=wait)

    def _job_or_404(job_id: str) -> dict:
        job = store.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, deleted or expired)")
        return job

    @app.get("/v1/jobs/{job_id}", summary="Status, progress and report of a job")
    async def get_job(job_id: str):
        return _view(await run_in_threadpool(_job_or_404, job_id))

    @app.get("/v1/jobs/{job_id}/result", summary="The job's PNG", response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    async def get_result(job_id: str):
        job = await run_in_threadpool(_job_or_404, job_id)
        if job["status"] != "succeeded":
            raise ApiError(409, "not_ready", f"job is {job['status']}; the result exists once it has succeeded")
        png = await run_in_threadpool(store.result, job_id)
        if png is None:
            raise ApiError(404, "no_result", "this job has no image result, or it expired")
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{job_id}.png"'})

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job, or delete an ended one and its result")
    async def delete_job(job_id: str):
        job = await run_in_threadpool(_job_or_404, job_id)
        if job["status"] not in ENDED:
            await run_in_threadpool(lambda: store.end(job_id, "cancelled", error="cancelled by request"))
            return _view(await run_in_threadpool(_job_or_404, job_id))
        await run_in_threadpool(store.delete, job_id)
        return {"job_id": job_id, "deleted": True}

    @app.get("/v1/models", summary="The classifiers this service protects against")
    async def models():
        out = []
        for name, card in cards.items():
            out.append({"name": name, "default": name == DEFAULT_MODEL,
                        **{k: card.get(k) for k in ("arch", "dataset", "threat", "input_size", "channels",
                                                    "class_names", "figures", "method")}})
        return {"models": out, "presets": PRESETS}

    @app.get("/healthz", summary="The API process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis answers and at least one worker is alive")
    async def readyz():
        try:
            await run_in_threadpool(store.r.ping)
            workers = await run_in_threadpool(store.workers)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"status": "unready", "detail": f"redis: {type(e).__name__}: {e}"}, status_code=503)
        if not workers:
            return JSONResponse({"status": "unready", "detail": "no worker is alive"}, status_code=503)
        return {"status": "ready", "workers": sorted(workers)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus():
        body, content_type = await run_in_threadpool(metrics.render)
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 1024 * 1024)
    return app


def _view(job: dict) -> dict:
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
        "params": {k: v for k, v in job["params"].items() if k != "image"},
    }
    if "report" in job:
        view["report"] = job["report"]
    return view
