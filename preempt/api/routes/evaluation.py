"""``POST /v1/attack`` and ``POST /v1/certify``: evaluation of a submitted image (jobs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query

from preempt.api.deps import OneFile, Prefer, SubmitterDep, read_image, wait_seconds
from preempt.api.errors import InvalidParameter
from preempt.api.forms import AttackForm, CertifyForm, WaitQuery
from preempt.api.submit import SUBMIT_RESPONSES, submit
from preempt.request import AttackRequest, CertifyRequest
from preempt.schemas import JobCreated

router = APIRouter(tags=["evaluation"])


@router.post("/attack", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Attack an image: grey-box, and white-box given the original", responses=SUBMIT_RESPONSES)
async def attack(via: SubmitterDep, form: Annotated[AttackForm, Form(media_type="multipart/form-data")],
                 query: Annotated[WaitQuery, Query()], prefer: Prefer = None):
    name, card = via.card(form.model)
    request = AttackRequest.resolve(card, name, max_iterations=via.settings.max_iterations,
                                    whitebox=form.original is not None, **form.request_fields())
    data, image = await read_image(form.file, via.settings)
    extra = None
    if form.original is not None:
        odata, oimage = await read_image(form.original, via.settings, "original")
        if (oimage.width, oimage.height) != (image.width, image.height):
            raise InvalidParameter(f"original: {oimage.width}x{oimage.height} differs from the image's "
                                   f"{image.width}x{image.height}")
        extra = {"original": odata}
    return await submit(via, request, data, image, extra, wait=wait_seconds(query.wait, prefer),
                        callback_url=form.callback_url)


@router.post("/certify", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Smoothed prediction and certified l2 radius", responses=SUBMIT_RESPONSES)
async def certify(via: SubmitterDep, form: Annotated[CertifyForm, Form(media_type="multipart/form-data")],
                  query: Annotated[WaitQuery, Query()], prefer: Prefer = None):
    name, card = via.card(form.model)
    request = CertifyRequest.resolve(card, name, **form.request_fields())
    data, image = await read_image(form.file, via.settings)
    return await submit(via, request, data, image, wait=wait_seconds(query.wait, prefer),
                        callback_url=form.callback_url)
