"""From a :class:`~preempt.request.RobustifyRequest` to protected files: what the command line and the
workers both run (torch).

:func:`load_protector` loads the request's classifier once (fp32 for labels and checks, and the
robustifying precision); :func:`protect` robustifies one batch of decoded images of one shape through
:func:`preempt.core.protect.protect_images` and completes each report with the model's name and the
label's class name. :func:`preempt.core.protect.batches_by_shape` cuts a list of images into such batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from preempt.core.images import DecodedImage
from preempt.core.models import LoadedClassifier, load_classifier
from preempt.core.protect import DEFAULT_VERIFY, ProtectResult, protect_images
from preempt.core.robustify import Progress, RobustifyConfig
from preempt.core.threat import ThreatModel
from preempt.core.transforms import Transform
from preempt.request import DEFAULT_JPEG_QUALITY, RobustifyRequest


@dataclass
class Protector:
    """A classifier loaded for robustification: ``judge`` (fp32) labels and checks, ``fast`` robustifies."""

    judge: LoadedClassifier
    fast: LoadedClassifier
    device: str

    def class_name(self, label: int) -> Optional[str]:
        names = self.judge.spec.class_names
        return names[label] if names and 0 <= label < len(names) else None


def load_protector(model: str, device: str = "cpu", precision: str = "fp32", arch: Optional[str] = None) -> Protector:
    """Load ``model`` (a registered name or a file) on ``device``; ``ValueError`` says what is wrong."""
    judge = load_classifier(model, arch=arch, device=device)
    fast = judge if precision == "fp32" else load_classifier(model, arch=arch, device=device, precision=precision)
    return Protector(judge=judge, fast=fast, device=device)


def protect(request: RobustifyRequest, protector: Protector, images: Sequence[DecodedImage],
            progress: Optional[Progress] = None) -> List[ProtectResult]:
    """Robustify ``images`` (one shape) as one batch as ``request`` says; PNG bytes and a report for each."""
    verify = request.verify != "off"
    size = protector.judge.spec.input_size
    config = RobustifyConfig(**request.config_fields(), smooth_size=tuple(size) if request.smooth and size else None)
    results = protect_images(protector.fast.model, list(images), ThreatModel(**request.threat_fields()), config,
                             device=protector.device, verify=verify, progress=progress, judge=protector.judge.model,
                             verify_attack=request.verify if verify else DEFAULT_VERIFY, retry=request.retry,
                             strength=request.strength if verify else "high",
                             survive=Transform(request.survive) if request.survive else None,
                             output=request.format, quality=request.quality or DEFAULT_JPEG_QUALITY)
    for r in results:
        r.report = {"model": request.model, **r.report, "label_name": protector.class_name(r.report["label"])}
    return results
