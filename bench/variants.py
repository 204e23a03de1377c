"""Robustifier variants the benchmarks measure and the product does not use (docs/science.md).

* ``inner_loss="cw"``: the inner attack ascends the Carlini-Wagner margin instead of the cross-entropy;
* ``outer_loss="cw"``: the outer update descends the margin at the attack's end point (the decision
  itself, not the confidence); its stop threshold is 0 (a negative margin means class ``y``);
* :data:`RETRY_CONFIGS`: the second tries measured against the product's :data:`RETRY_CONFIG`.

:func:`run` is :func:`robustify` with a variant's fields: :class:`RobustifyConfig` fields plus these two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from preempt.core.protect import RETRY_CONFIG
from preempt.core.robustify import InnerObjective, RobustifyConfig, RobustifyResult, robustify

FULL_LOOP = {"stop_patience": 0, "plateau_window": 0}  # no early stopping: the paper's loop
RETRY_CONFIGS = {
    "targeted9-max-full": {**RETRY_CONFIG, "samples": 9},
    "targeted3-max-full": RETRY_CONFIG,
    "paper-full": FULL_LOOP,
}


def margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` of logits ``z`` per image (positive: misclassified)."""
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return other - z.gather(1, y[:, None]).squeeze(1)


def margin_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Carlini-Wagner margin of ``model`` at ``x`` per image."""
    return margin(model(x), y)


class MarginObjective(InnerObjective):
    """The inner objective with the margin as the attack's loss (``inner="cw"``) and/or the update's (``outer="cw"``)."""

    def __init__(self, model, threat, cfg: RobustifyConfig, inner: str = "ce", outer: str = "ce"):
        super().__init__(model, threat, cfg)
        if outer == "cw" and cfg.sigma is not None:
            raise ValueError("a smoothed classifier's robustification descends the smoothed cross-entropy")
        self.inner, self.outer = inner, outer

    def attack_loss(self, starts, y):
        return margin_loss if self.inner == "cw" and self.cfg.sigma is None else super().attack_loss(starts, y)

    def outer_loss(self, x_adv, y):
        if self.outer != "cw":
            return super().outer_loss(x_adv, y)
        z = self.model(x_adv)  # one forward pass gives the objective and the reported cross-entropy
        return margin(z, y), F.cross_entropy(z, y, reduction="none")


def run(model, x, threat, fields: dict, **kwargs) -> RobustifyResult:
    """:func:`robustify` with a variant's ``fields`` (``inner_loss`` may be ``"cw"``; ``outer_loss`` ``"ce"`` or ``"cw"``)."""
    fields = dict(fields)
    outer = fields.pop("outer_loss", "ce")
    inner = fields.pop("inner_loss") if fields.get("inner_loss") == "cw" else "ce"
    if outer == "cw":
        fields.setdefault("stop_loss", 0.0)
    cfg = RobustifyConfig(**fields)
    objective = None
    if "cw" in (inner, outer):
        objective = MarginObjective(model, threat, cfg.resolved(threat), inner, outer)
    return robustify(model, x, threat, cfg, objective=objective, **kwargs)
