"""One real image in, one protected 8-bit PNG and its protection report out.

The pipeline the command line and the service share:

1. the decoded image ``[C, H, W]`` at its native resolution is robustified against the classifier
   *including* the platform's preprocessing (:class:`models.Preprocess`), so the robustness is of
   the transmitted file itself;
2. the result is rounded to the 8-bit grid inside the delta budget (:func:`images.quantize_within_budget`);
3. the PNG is written, decoded again, and the verification attack runs on those decoded pixels:
   the report tells what a man in the middle would face, not what a float tensor did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .attacks import pgd
from .images import DecodedImage, budget_used, decode, encode_png, quantize_within_budget
from .robustify import Progress, RobustifyConfig, robustify
from .threat import ThreatModel

VERIFY_ATTACK = "pgd-20x5"  # PGD-20, step eps/4, 5 random restarts


@dataclass
class ProtectResult:
    png: bytes
    pixels: torch.Tensor  # the decoded output [C, H, W]
    report: dict


def verify_robust(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, threat: ThreatModel,
                  restarts: int = 5) -> torch.Tensor:
    """Grey-box check of :data:`VERIFY_ATTACK` on a batch: ``True`` where the label survives."""
    x_adv = pgd(model, x, label, threat.geometry, threat.epsilon, steps=20, restarts=restarts)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == label) & (model(x).argmax(1) == label)


def protect_images(model: torch.nn.Module, images: List[DecodedImage], threat: ThreatModel,
                   config: Optional[RobustifyConfig] = None, device: str = "cpu", verify: bool = True,
                   progress: Optional[Progress] = None, judge: Optional[torch.nn.Module] = None) -> List[ProtectResult]:
    """Robustify decoded images of one shape as one batch; return PNG bytes and a report for each.

    ``judge`` (default: ``model``) is the classifier the label, the label check and the
    verification attack use: the fp32 model when ``model`` runs in reduced precision.
    """
    judge = judge if judge is not None else model
    shapes = {tuple(img.pixels.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"protect_images needs images of one shape, got {sorted(shapes)}")
    x_orig = torch.stack([img.pixels for img in images]).to(device)
    y = None  # a smoothed classifier's label is the smoothed prediction (robustify computes it)
    if config is None or config.sigma is None:
        with torch.no_grad():
            y = judge(x_orig).argmax(1)
    result = robustify(model, x_orig, threat, config, y=y, progress=progress)
    x_q = quantize_within_budget(result.x_rob, x_orig, threat.norm, threat.delta)
    pngs = [encode_png(x_q[i], img.alpha) for i, img in enumerate(images)]
    decoded = torch.stack([decode(png).pixels for png in pngs]).to(device)
    label = result.label
    with torch.no_grad():
        kept = judge(decoded).argmax(1) == label
    robust = verify_robust(judge, decoded, label, threat) if verify else None
    out = []
    for i, png in enumerate(pngs):
        report = {
            "norm": threat.norm, "epsilon": threat.epsilon, "delta": threat.delta,
            **budget_used(decoded[i], x_orig[i]),
            "label": int(label[i]),
            "label_kept": bool(kept[i]),
            "robust_loss": float(result.robust_loss[i]),
            "passes": int(result.passes_per_image[i]),
            "iterations_run": int(result.stopped_at[i]),
        }
        if robust is not None:
            report["verified"] = {"attack": VERIFY_ATTACK, "robust": bool(robust[i])}
        out.append(ProtectResult(png=png, pixels=decoded[i].cpu(), report=report))
    return out


def protect_image(model: torch.nn.Module, image: DecodedImage, threat: ThreatModel,
                  config: Optional[RobustifyConfig] = None, device: str = "cpu", verify: bool = True,
                  progress: Optional[Progress] = None, judge: Optional[torch.nn.Module] = None) -> ProtectResult:
    """Robustify one decoded image; return the PNG bytes and the protection report."""
    return protect_images(model, [image], threat, config, device, verify, progress, judge)[0]
