"""``POST /v1/attack`` and ``POST /v1/certify``: evaluation of a submitted image (jobs)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, File, Form, Query, UploadFile

from preempt.api.deps import CardsDep, EnqueueDep, MetricsDep, SettingsDep, StoreDep, known_model, read_image
from preempt.api.errors import InvalidParameter
from preempt.api.submit import submit
from preempt.request import AttackRequest, CertifyRequest

router = APIRouter(prefix="/v1", tags=["evaluation"])


@router.post("/attack", status_code=202, summary="Attack an image: grey-box, and white-box given the original")
async def attack(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    file: Optional[UploadFile] = File(None, description="the image to attack (e.g. a robustified one)"),
    original: Optional[UploadFile] = File(None, description="the original, for the white-box attack"),
    model: Optional[str] = Form(None), norm: Optional[str] = Form(None), epsilon: Optional[str] = Form(None),
    attack: Optional[str] = Form(None), label: Optional[str] = Form(None), iterations: Optional[str] = Form(None),
    wait: float = Query(0.0, ge=0.0, le=60.0),
):
    name = known_model(model, cards)
    request = AttackRequest.resolve(cards[name], name, max_iterations=settings.max_iterations, norm=norm,
                                    epsilon=epsilon, attack=attack, label=label, iterations=iterations,
                                    whitebox=original is not None)
    data, image = await read_image(file, settings)
    extra = None
    if original is not None:
        odata, oimage = await read_image(original, settings, "original")
        if (oimage.width, oimage.height) != (image.width, image.height):
            raise InvalidParameter(f"original: {oimage.width}x{oimage.height} differs from the image's "
                                   f"{image.width}x{image.height}")
        extra = {"original": odata}
    return await submit(store, enqueue, metrics, request, data, image, extra, wait=wait)


@router.post("/certify", status_code=202, summary="Smoothed prediction and certified l2 radius")
async def certify(
    store: StoreDep, enqueue: EnqueueDep, settings: SettingsDep, cards: CardsDep, metrics: MetricsDep,
    file: Optional[UploadFile] = File(None), model: Optional[str] = Form(None),
    sigma: Optional[str] = Form(None), n0: Optional[str] = Form(None), n: Optional[str] = Form(None),
    alpha: Optional[str] = Form(None), wait: float = Query(0.0, ge=0.0, le=60.0),
):
    name = known_model(model, cards)
    request = CertifyRequest.resolve(cards[name], name, sigma=sigma, n0=n0, n=n, alpha=alpha)
    data, image = await read_image(file, settings)
    return await submit(store, enqueue, metrics, request, data, image, wait=wait)
