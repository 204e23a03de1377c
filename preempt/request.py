"""What a caller asks for, typed and torch-free: the one request shape from the edge to the core.

:class:`RobustifyRequest` holds every choice of a robustification (model, threat, effort, stopping
rule, verification, retry). The command line and the HTTP API build it with :meth:`RobustifyRequest.resolve`,
which takes the defaults from the model card in one place and validates every range; the job store
keeps it as JSON (:meth:`~RobustifyRequest.to_json`); the worker reads it back
(:meth:`~RobustifyRequest.from_json`) and batches jobs whose :meth:`~RobustifyRequest.batch_key` agree.
:class:`AttackRequest` and :class:`CertifyRequest` do the same for the evaluation jobs.

A request never holds a tensor: :mod:`preempt.pipeline` turns it into the core's
``ThreatModel`` and ``RobustifyConfig``.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from preempt.transformspec import normalize_spec

Norm = Literal["linf", "l2"]
Preset = Literal["low", "medium", "high"]
Verify = Literal["apgd", "pgd", "off"]
# Visibility against protection (core/protect.py: shrink); the default is chosen in docs/quality.md.
Strength = Literal["high", "medium", "low"]
DEFAULT_STRENGTH = "medium"
DEFAULT_JPEG_QUALITY = 90
# With texture masking, the share of the budget a pixel in a flat area may use (docs/quality.md measures it).
TEXTURE_FLOOR = 0.25

# Robustification effort: outer iterations MAXITER, inner steps T, random starts N.
# "medium" is the paper's official setting (100 x (20 + 1) passes per image).
PRESETS = {
    "low": {"iterations": 30, "steps": 10, "samples": 1},
    "medium": {"iterations": 100, "steps": 20, "samples": 1},
    "high": {"iterations": 200, "steps": 20, "samples": 2},
}
DEFAULT_PRESET = "medium"
DEFAULT_EPSILON = {"linf": 0.1, "l2": 1.5}  # for a model whose card names no threat of that norm
MAX_BUDGET = {"linf": 1.0, "l2": 1000.0}  # the largest epsilon and delta a request may ask for
MAX_ITERATIONS = 2000
VERIFY_CHOICES = {"true": "apgd", "yes": "apgd", "on": "apgd", "1": "apgd",
                  "false": "off", "no": "off", "0": "off", "apgd": "apgd", "pgd": "pgd", "off": "off"}


class RequestError(ValueError):
    """A request that does not validate; ``errors`` is a list of ``(field, message)``, the text says all of them."""

    def __init__(self, errors: list):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))

    @classmethod
    def from_validation(cls, e: ValidationError) -> "RequestError":
        return cls([(".".join(str(p) for p in err["loc"]) or "request", err["msg"].removeprefix("Value error, "))
                    for err in e.errors()])


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str):
        return cls.model_validate_json(text)

    @classmethod
    def _validated(cls, data: dict, **context):
        try:
            return cls.model_validate(data, context=context)
        except ValidationError as e:
            raise RequestError.from_validation(e) from None


def _within_budget(cls, value: float, info: ValidationInfo) -> float:
    """epsilon and delta: at most :data:`MAX_BUDGET` of the request's norm (declared before them)."""
    hi = MAX_BUDGET.get(info.data.get("norm"), min(MAX_BUDGET.values()))
    if value > hi:
        raise ValueError(f"{value:g} is out of range for {info.data.get('norm')}; allowed (0, {hi:g}]")
    return value


def _within_max_iterations(cls, value: int, info: ValidationInfo) -> int:
    limit = (info.context or {}).get("max_iterations", MAX_ITERATIONS)
    if value > limit:
        raise ValueError(f"{value} is over the limit of {limit}")
    return value


def _threat_defaults(card: Mapping, norm: Optional[str]) -> tuple:
    """``(norm, epsilon)``: the given norm or the card's; the card's epsilon when the norms agree."""
    threat = card.get("threat") or {}
    norm = norm or threat.get("norm", "linf")
    epsilon = threat.get("epsilon") if threat.get("norm", "linf") == norm else None
    return norm, epsilon or DEFAULT_EPSILON.get(norm)


class RobustifyRequest(_Request):
    """One robustification: Algorithm 1's settings and what is done with its output."""

    model: str = Field(min_length=1, description="registered model name (or, on the command line, a model file)")
    norm: Norm
    epsilon: float = Field(gt=0, description="the adversary's budget")
    delta: float = Field(gt=0, description="the defender's budget: how far the image may move")
    preset: Preset = DEFAULT_PRESET
    iterations: int = Field(ge=1, description="outer iterations MAXITER")
    steps: int = Field(ge=1, le=200, description="inner PGD steps T")
    samples: int = Field(ge=1, le=64, description="random starts N per outer iteration")
    stop_patience: int = Field(3, ge=0, le=MAX_ITERATIONS,
                               description="stop an image after this many iterations with attack loss below "
                                           "stop_loss, confirmed by a fresh attack (0: off)")
    stop_loss: Optional[float] = Field(None, gt=0, le=10, description="None: ln 2, or 0.1 for l2")
    plateau_window: int = Field(20, ge=0, le=MAX_ITERATIONS,
                                description="stop an image whose loss fell less than 2% over this many iterations "
                                            "(0: off)")
    verify: Verify = Field("apgd", description="the check on the written PNG: apgd (PGD-20, APGD-CE, APGD-T), "
                                               "pgd (PGD-20 x 5), off")
    retry: bool = Field(False, description="robustify once more the images the check rejects")
    strength: Strength = Field(DEFAULT_STRENGTH, description=(
        "how much of the change to keep: high, all the robustifier found; medium, the smallest scale of it that "
        "passes the first stage of the check, one step further inside, if it passes the whole check; low, the "
        "smallest (needs verify; with verify off the whole change is written)"))
    smooth: bool = Field(True, description="an image larger than the model's input gets its change at the model's "
                                           "resolution, upsampled smoothly (no block pattern)")
    texture: bool = Field(False, description="shape the change by the image: flat areas may move by at most "
                                             "a quarter of delta, textured areas and edges by delta")
    survive: Optional[str] = Field(None, max_length=200, description=(
        "what the platform does to the file before its classifier, e.g. jpeg:75-95, resize:0.5-1.0, "
        "resize:0.5+jpeg:85: the robustifier optimises through it and the check runs on the file re-encoded "
        "with the real codec at the ends and the middle of each range (docs/transforms.md)"))
    format: Literal["png", "jpeg"] = Field("png", description=(
        "the file written: png (lossless, the default) or jpeg (for clients that can only send JPEG: the "
        "protection is optimised for and checked on the JPEG itself)"))
    quality: Optional[int] = Field(None, ge=1, le=100, description="the JPEG quality with format jpeg (default 90)")

    _budget = field_validator("epsilon", "delta")(_within_budget)
    _iterations = field_validator("iterations")(_within_max_iterations)

    @field_validator("survive")
    @classmethod
    def _transform_spec(cls, survive: Optional[str]) -> Optional[str]:
        if survive is None:
            return None
        spec = normalize_spec(survive)
        return None if spec == "none" else spec

    @field_validator("quality")
    @classmethod
    def _quality_needs_jpeg(cls, quality: Optional[int], info: ValidationInfo) -> Optional[int]:
        if quality is not None and info.data.get("format") != "jpeg":
            raise ValueError("is the JPEG quality; it needs format jpeg")
        return quality

    @field_validator("retry")
    @classmethod
    def _retry_needs_verify(cls, retry: bool, info: ValidationInfo) -> bool:
        if retry and info.data.get("verify") == "off":
            raise ValueError("retry sends back the images the check rejects; it needs verify on")
        return retry

    @classmethod
    def resolve(cls, card: Mapping, model: str, *, max_iterations: int = MAX_ITERATIONS,
                **given: Any) -> "RobustifyRequest":
        """The request for ``model`` (whose card is ``card``) with the ``given`` choices; ``None`` means "default".

        Defaults: the card's norm and epsilon (else linf 0.1, or l2 1.5), the card's delta (for its own norm and
        epsilon; else delta = epsilon), the preset's
        effort (``medium``), the product's stopping rule, verification ``apgd``, no retry. ``verify``
        may also be a yes/no word (true = apgd). Raises :class:`RequestError` naming each bad field.
        """
        given = {k: v for k, v in given.items() if v is not None and v != ""}
        unknown = set(given) - set(cls.model_fields)
        if unknown:
            raise RequestError([(k, "unknown parameter") for k in sorted(unknown)])
        norm, epsilon = _threat_defaults(card, given.get("norm"))
        data = {"model": model, "norm": norm, "epsilon": epsilon, "preset": DEFAULT_PRESET, **given}
        threat = card.get("threat") or {}
        card_delta = threat.get("delta") if threat.get("norm", "linf") == norm and "epsilon" not in given else None
        data.setdefault("delta", card_delta or data["epsilon"])
        if data.get("format") == "jpeg":
            data.setdefault("quality", DEFAULT_JPEG_QUALITY)
        if isinstance(data.get("verify"), bool):
            data["verify"] = "apgd" if data["verify"] else "off"
        elif isinstance(data.get("verify"), str):
            data["verify"] = VERIFY_CHOICES.get(data["verify"].strip().lower(), data["verify"])
        for k, v in PRESETS.get(data["preset"], PRESETS[DEFAULT_PRESET]).items():
            data.setdefault(k, v)
        return cls._validated(data, max_iterations=max_iterations)

    def batch_key(self, shape) -> str:
        """Jobs whose keys are equal are robustified as one batch: every setting that changes the
        computation, and the image's pixel shape ``(C, H, W)``."""
        fields = self.model_dump(exclude={"preset"})
        return json.dumps(fields, sort_keys=True, separators=(",", ":")) + "|" + "x".join(str(int(s)) for s in shape)

    def threat_fields(self) -> dict:
        """Keyword arguments of the core's ``ThreatModel``."""
        return {"norm": self.norm, "epsilon": self.epsilon, "delta": self.delta}

    def config_fields(self) -> dict:
        """Keyword arguments of the core's ``RobustifyConfig``."""
        return {**self.model_dump(include={"iterations", "steps", "samples", "stop_patience", "stop_loss",
                                           "plateau_window"}),
                "texture_floor": TEXTURE_FLOOR if self.texture else None}


class AttackRequest(_Request):
    """The grey-box attack of an image, and with its original the adaptive white-box attack (Alg. 3-4)."""

    model: str = Field(min_length=1)
    norm: Norm
    epsilon: float = Field(gt=0)
    attack: Literal["pgd", "aa"] = Field("pgd", description="pgd: PGD-20; aa: AutoAttack (standard)")
    label: Optional[int] = Field(None, ge=0, description="the label to attack (default: the model's prediction)")
    iterations: int = Field(100, ge=1, description="iterations of the reconstruction (Algorithm 3)")
    whitebox: bool = False

    _budget = field_validator("epsilon")(_within_budget)
    _iterations = field_validator("iterations")(_within_max_iterations)

    @field_validator("label")
    @classmethod
    def _known_class(cls, label: Optional[int], info: ValidationInfo) -> Optional[int]:
        classes = (info.context or {}).get("num_classes")
        if label is not None and classes and label >= classes:
            raise ValueError(f"{label} is out of range; the model has {classes} classes")
        return label

    @classmethod
    def resolve(cls, card: Mapping, model: str, *, max_iterations: int = MAX_ITERATIONS,
                **given: Any) -> "AttackRequest":
        given = {k: v for k, v in given.items() if v is not None and v != ""}
        norm, epsilon = _threat_defaults(card, given.get("norm"))
        data = {"model": model, "norm": norm, "epsilon": epsilon, **given}
        return cls._validated(data, max_iterations=max_iterations,
                              num_classes=len(card.get("class_names") or []) or card.get("num_classes"))


class CertifyRequest(_Request):
    """Randomized smoothing: PREDICT and CERTIFY of Cohen et al. on one image."""

    model: str = Field(min_length=1)
    sigma: float = Field(0.25, gt=0, le=10, description="the Gaussian noise level")
    n0: int = Field(100, ge=1, le=100_000, description="noise samples that select the class")
    n: int = Field(10_000, ge=1, le=1_000_000, description="noise samples that estimate its probability")
    alpha: float = Field(0.001, gt=0, le=0.5, description="the failure probability of the certificate")

    @classmethod
    def resolve(cls, card: Mapping, model: str, **given: Any) -> "CertifyRequest":
        given = {k: v for k, v in given.items() if v is not None and v != ""}
        return cls._validated({"model": model, **given})


REQUESTS = {"robustify": RobustifyRequest, "attack": AttackRequest, "certify": CertifyRequest}
