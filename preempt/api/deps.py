"""Typed dependencies of the routes: what a route needs, by type (tests override them)."""

from __future__ import annotations

from typing import Annotated, Callable, Optional

from fastapi import Depends, Header, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from preempt.api.errors import (BodyTooLarge, Forbidden, InvalidParameter, InvalidRequest, JobNotFound,
                                RateLimited, Unauthorized, image_error)
from preempt.api.metrics import Metrics
from preempt.imagefile import ImageError, ImageInfo, inspect_image
from preempt.keys import ANONYMOUS, Caller
from preempt.registry import DEFAULT_MODEL
from preempt.settings import Settings
from preempt.store import JobStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_enqueue(request: Request) -> Callable[[str], None]:
    """Sends a job id to the workers (the Celery queue)."""
    return request.app.state.enqueue


def get_cards(request: Request) -> dict:
    """Model name -> model card of the models this service protects against."""
    return request.app.state.catalog.cards()


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_caller(request: Request) -> Caller:
    """The API key's caller; with auth off, :data:`ANONYMOUS`. 401 without a known key, 403 for a revoked one."""
    settings: Settings = request.app.state.settings
    if settings.auth != "required":
        return ANONYMOUS
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("an API key is required: send Authorization: Bearer KEY")
    caller = request.app.state.keys.lookup(key.strip())
    if caller is None:
        raise Unauthorized("unknown API key")
    if caller.revoked:
        raise Forbidden("this API key was revoked")
    try:
        request.app.state.ratelimiter.check(caller)
    except RateLimited:
        request.app.state.metrics.refused(caller.name, "rate")
        raise
    return caller


def require_admin(request: Request) -> None:
    """``/metrics`` with auth on: an admin key only."""
    if request.app.state.settings.auth == "required" and not get_caller(request).admin:
        raise Forbidden("this route needs an admin key (preempt keys create NAME --admin)")


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(get_caller)]
StoreDep = Annotated[JobStore, Depends(get_store)]
EnqueueDep = Annotated[Callable[[str], None], Depends(get_enqueue)]
CardsDep = Annotated[dict, Depends(get_cards)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_job(job_id: str, store: StoreDep, caller: CallerDep) -> dict:
    """The caller's job; another key's job is 404 too (no oracle of which ids exist)."""
    job = await run_in_threadpool(store.get, job_id) if job_id.isalnum() and len(job_id) <= 64 else None
    if job is None or job.get("owner", "") != caller.name:
        raise JobNotFound(f"no job {job_id!r} (unknown, deleted or expired)")
    return job


JobDep = Annotated[dict, Depends(get_job)]


class Submitter:
    """What a POST route needs to turn a form into a queued job: settings, model cards, store, queue, metrics."""

    def __init__(self, store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep,
                 metrics: MetricsDep, caller: CallerDep,
                 idempotency_key: Annotated[Optional[str], Header(
                     max_length=200, description="the same key from the same API key within 24 h returns the "
                                                 "first job; with another request it is a 409")] = None):
        self.store, self.enqueue, self.settings, self.cards, self.metrics = store, enqueue, settings, cards, metrics
        self.caller, self.idempotency_key = caller, idempotency_key

    def card(self, name: Optional[str]) -> tuple:
        """``(name, card)`` of the model a form names (the default when none), or a 422 naming the choices."""
        name = known_model(name, self.cards)
        return name, self.cards[name]


SubmitterDep = Annotated[Submitter, Depends()]
Prefer = Annotated[Optional[str], Header(description="RFC 7240: `wait=N` waits like ?wait=N")]


def known_model(name: Optional[str], cards: dict) -> str:
    """The model a request names (the default when none), or a 422 naming the choices."""
    name = name or DEFAULT_MODEL
    if name not in cards:
        raise InvalidParameter(f"model: unknown model {name!r}; GET /v1/models lists them")
    return name


async def one_file_each(request: Request) -> None:
    """One request protects one image: a second part of the same file field is a 422."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return
    form = await request.form()
    for field in ("file", "original"):
        if len(form.getlist(field)) > 1:
            raise InvalidParameter(f"{field}: {len(form.getlist(field))} parts sent; send one image per request")


def wait_seconds(query_wait: float, prefer: Optional[str]) -> float:
    """The longer of ``?wait=N`` and RFC 7240's ``Prefer: wait=N``, at most 60 s (a bad header is ignored)."""
    header = 0.0
    for token in (prefer or "").replace(";", ",").split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                header = float(value.strip().strip('"'))
            except ValueError:
                pass
    return min(max(query_wait, header if header == header else 0.0, 0.0), 60.0)


OneFile = Depends(one_file_each)


async def read_image(upload: Optional[UploadFile], settings: Settings, field: str = "file") -> tuple:
    """``(bytes, ImageInfo)`` of an upload that passed every check; the matching error otherwise."""
    if upload is None or not hasattr(upload, "read"):
        raise InvalidRequest(f"{field}: an image file is required (multipart field {field!r})")
    data = await upload.read()
    if len(data) > settings.max_upload_bytes:
        raise BodyTooLarge(f"{field}: {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    try:
        info: ImageInfo = await run_in_threadpool(inspect_image, data, settings.max_pixels)
    except ImageError as e:
        raise image_error(field, e) from None
    return data, info
