"""``POST /v1/robustify``: protect an uploaded image (a job)."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Form, Header, Query

from preempt.api.deps import (CardsDep, EnqueueDep, MetricsDep, OneFile, SettingsDep, StoreDep, known_model,
                              read_image, wait_seconds)
from preempt.api.forms import RobustifyForm, WaitQuery
from preempt.api.submit import SUBMIT_RESPONSES, submit
from preempt.request import RobustifyRequest
from preempt.schemas import JobCreated

router = APIRouter(tags=["robustify"])


@router.post("/robustify", status_code=202, response_model=JobCreated, dependencies=[OneFile],
             summary="Robustify an image (returns a job)", responses=SUBMIT_RESPONSES)
async def robustify(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    form: Annotated[RobustifyForm, Form(media_type="multipart/form-data")],
    query: Annotated[WaitQuery, Query()],
    prefer: Annotated[Optional[str], Header(description="RFC 7240: `wait=N` waits like ?wait=N")] = None,
):
    name = known_model(form.model, cards)
    request = RobustifyRequest.resolve(cards[name], name, max_iterations=settings.max_iterations,
                                       **form.request_fields())
    data, image = await read_image(form.file, settings)
    return await submit(store, enqueue, metrics, request, data, image, batch=request.batch_key(image.shape),
                        wait=wait_seconds(query.wait, prefer))
