"""``POST /v1/robustify``: protect an uploaded image (a job)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query

from preempt.api.deps import OneFile, Prefer, SubmitterDep, read_image, wait_seconds
from preempt.api.forms import RobustifyForm, WaitQuery
from preempt.api.submit import SUBMIT_RESPONSES, submit
from preempt.request import RobustifyRequest
from preempt.schemas import JobCreated

router = APIRouter(tags=["robustify"])


@router.post("/robustify", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Robustify an image (returns a job)", responses=SUBMIT_RESPONSES)
async def robustify(via: SubmitterDep, form: Annotated[RobustifyForm, Form(media_type="multipart/form-data")],
                    query: Annotated[WaitQuery, Query()], prefer: Prefer = None):
    name, card = via.card(form.model)
    request = RobustifyRequest.resolve(card, name, max_iterations=via.settings.max_iterations, **form.request_fields())
    data, image = await read_image(form.file, via.settings)
    return await submit(via, request, data, image, batch=request.batch_key(image.shape),
                        wait=wait_seconds(query.wait, prefer), callback_url=form.callback_url)
