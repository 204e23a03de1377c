"""``POST /v1/attack`` and ``POST /v1/certify``: evaluation of a submitted image (jobs)."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Form, Header, Query

from preempt.api.deps import (CardsDep, EnqueueDep, MetricsDep, OneFile, SettingsDep, StoreDep, known_model,
                              read_image, wait_seconds)
from preempt.api.errors import InvalidParameter
from preempt.api.forms import AttackForm, CertifyForm, WaitQuery
from preempt.api.submit import SUBMIT_RESPONSES, submit
from preempt.request import AttackRequest, CertifyRequest
from preempt.schemas import JobCreated

router = APIRouter(tags=["evaluation"])
Prefer = Annotated[Optional[str], Header(description="RFC 7240: `wait=N` waits like ?wait=N")]


@router.post("/attack", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Attack an image: grey-box, and white-box given the original", responses=SUBMIT_RESPONSES)
async def attack(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    form: Annotated[AttackForm, Form(media_type="multipart/form-data")], query: Annotated[WaitQuery, Query()],
    prefer: Prefer = None,
):
    name = known_model(form.model, cards)
    request = AttackRequest.resolve(cards[name], name, max_iterations=settings.max_iterations,
                                    whitebox=form.original is not None, **form.request_fields())
    data, image = await read_image(form.file, settings)
    extra = None
    if form.original is not None:
        odata, oimage = await read_image(form.original, settings, "original")
        if (oimage.width, oimage.height) != (image.width, image.height):
            raise InvalidParameter(f"original: {oimage.width}x{oimage.height} differs from the image's "
                                   f"{image.width}x{image.height}")
        extra = {"original": odata}
    return await submit(store, enqueue, metrics, request, data, image, extra, wait=wait_seconds(query.wait, prefer))


@router.post("/certify", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Smoothed prediction and certified l2 radius", responses=SUBMIT_RESPONSES)
async def certify(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    form: Annotated[CertifyForm, Form(media_type="multipart/form-data")], query: Annotated[WaitQuery, Query()],
    prefer: Prefer = None,
):
    name = known_model(form.model, cards)
    request = CertifyRequest.resolve(cards[name], name, **form.request_fields())
    data, image = await read_image(form.file, settings)
    return await submit(store, enqueue, metrics, request, data, image, wait=wait_seconds(query.wait, prefer))
