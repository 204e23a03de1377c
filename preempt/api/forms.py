"""The multipart forms and query parameters the POST routes accept: typed, ranged, and closed (an unknown
field is a 422 naming it), so that the OpenAPI schema says what is allowed."""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from preempt.request import MAX_BUDGET, MAX_ITERATIONS, Norm, Preset, Strength

class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callback_url: Optional[str] = Field(None, max_length=2000,
                                        description="POSTed the job record, signed, when the job ends")

    def request_fields(self) -> dict:
        """The fields a request is resolved from (the uploads, the model name and the callback apart)."""
        return self.model_dump(exclude={"file", "original", "model", "callback_url"})


class RobustifyForm(_Form):
    file: UploadFile = Field(description="the image: PNG, JPEG or WebP; grayscale, RGB or RGBA")
    model: Optional[str] = Field(None, description="a name from GET /v1/models (default: the default model)")
    preset: Optional[Preset] = Field(None, description="effort: low (30 x 10), medium (100 x 20), high (200 x 20, 2 starts)")
    norm: Optional[Norm] = Field(None, description="the threat's norm (default: the model card's)")
    epsilon: Optional[float] = Field(None, gt=0, le=max(MAX_BUDGET.values()),
                                     description="the adversary's budget; at most 1 for linf (default: the card's)")
    delta: Optional[float] = Field(None, gt=0, le=max(MAX_BUDGET.values()),
                                   description="how far the image may move; at most 1 for linf (default: epsilon)")
    iterations: Optional[int] = Field(None, ge=1, le=MAX_ITERATIONS,
                                      description="outer iterations (default: the preset's; the server may cap lower)")
    verify: Optional[Literal["apgd", "pgd", "off", "true", "false"]] = Field(
        None, description="the check on the written PNG: apgd (= true, default), pgd, off (= false)")
    retry: Optional[bool] = Field(None, description="robustify once more if the check rejects the image")
    strength: Optional[Strength] = Field(None, description="high: keep the whole change; medium (default): the "
                                                           "smallest scale of it that passes the check, one step "
                                                           "further inside; low: the smallest")
    smooth: Optional[bool] = Field(None, description="an image larger than the model's input: the change at the "
                                                     "model's resolution, upsampled smoothly (default true)")
    texture: Optional[bool] = Field(None, description="shape the change by the image: flat areas move by at most a "
                                                      "quarter of delta (default false)")
    survive: Optional[str] = Field(None, max_length=200, description=(
        "what the platform does to the file before classifying it, e.g. jpeg:75-95, resize:0.5-1.0 or "
        "resize:0.5+jpeg:85: the protection is optimised through it and checked after it (default: none)"))
    format: Optional[Literal["png", "jpeg"]] = Field(None, description=(
        "the file written: png (default) or jpeg, optimised for and checked on the JPEG itself"))
    quality: Optional[int] = Field(None, ge=1, le=100, description="the JPEG quality with format jpeg (default 90)")


class AttackForm(_Form):
    file: UploadFile = Field(description="the image to attack (e.g. a protected one)")
    original: Optional[UploadFile] = Field(None, description="its original: also run the white-box attack")
    model: Optional[str] = Field(None, description="a name from GET /v1/models")
    norm: Optional[Norm] = None
    epsilon: Optional[float] = Field(None, gt=0, le=max(MAX_BUDGET.values()))
    attack: Optional[Literal["pgd", "aa"]] = Field(None, description="pgd: PGD-20 (default); aa: AutoAttack")
    label: Optional[int] = Field(None, ge=0, description="the label to attack (default: the model's prediction)")
    iterations: Optional[int] = Field(None, ge=1, le=MAX_ITERATIONS, description="of the reconstruction")


class CertifyForm(_Form):
    file: UploadFile = Field(description="the image")
    model: Optional[str] = Field(None, description="a name from GET /v1/models")
    sigma: Optional[float] = Field(None, gt=0, le=10, description="noise level (default 0.25)")
    n0: Optional[int] = Field(None, ge=1, le=100_000, description="samples that select the class (default 100)")
    n: Optional[int] = Field(None, ge=1, le=1_000_000, description="samples that bound its probability (default 10000)")
    alpha: Optional[float] = Field(None, gt=0, le=0.5, description="failure probability (default 0.001)")


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: float = Field(0.0, ge=0.0, le=60.0,
                        description="seconds to wait for the job to end (at most 60); also `Prefer: wait=N`")
