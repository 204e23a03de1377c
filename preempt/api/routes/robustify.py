"""``POST /v1/robustify``: protect an uploaded image (a job)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, File, Form, Query, UploadFile

from preempt.api.deps import CardsDep, EnqueueDep, MetricsDep, SettingsDep, StoreDep, known_model, read_image
from preempt.api.submit import submit
from preempt.request import RobustifyRequest

router = APIRouter(prefix="/v1", tags=["robustify"])


@router.post("/robustify", status_code=202, summary="Robustify an image (returns a job)")
async def robustify(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    file: Optional[UploadFile] = File(None, description="PNG, JPEG or WebP"),
    model: Optional[str] = Form(None), preset: Optional[str] = Form(None), norm: Optional[str] = Form(None),
    epsilon: Optional[str] = Form(None), delta: Optional[str] = Form(None),
    iterations: Optional[str] = Form(None), verify: Optional[str] = Form(None),
    retry: Optional[str] = Form(None, description="true: robustify the image once more if the check rejects it"),
    wait: float = Query(0.0, ge=0.0, le=60.0, description="seconds to wait for the result"),
):
    name = known_model(model, cards)
    request = RobustifyRequest.resolve(cards[name], name, max_iterations=settings.max_iterations, preset=preset,
                                       norm=norm, epsilon=epsilon, delta=delta, iterations=iterations, verify=verify,
                                       retry=retry)
    data, image = await read_image(file, settings)
    return await submit(store, enqueue, metrics, request, data, image, batch=request.batch_key(image.shape), wait=wait)
