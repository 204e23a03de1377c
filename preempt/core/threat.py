"""Threat model and per-norm geometry (paper Section 3.2, Definitions 1-3).

A :class:`ThreatModel` names the norm (``linf`` or ``l2``), the adversary's budget
``epsilon`` and the defender's budget ``delta``. All norm-specific arithmetic lives in
:class:`Geometry`, with three operations that every algorithm is written against:

* ``step(x, grad, size)``      one ascent step: sign step (linf) or normalised gradient (l2);
* ``project(x, center, radius)`` projection onto ``B_radius(center)`` intersected with [0, 1];
* ``random_in_ball(center, radius)`` a point uniform in ``B_radius(center)``, clipped to [0, 1].

Tensors are batches ``[B, C, H, W]`` (any shape with a leading batch dimension works);
``radius`` is a float or a per-image tensor of shape ``[B]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

Radius = Union[float, torch.Tensor]
NORMS = ("linf", "l2")
_TINY = 1e-12


def _per_image(radius: Radius, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``[B]`` radius to ``[B, 1, 1, ...]`` matching ``like``."""
    r = torch.as_tensor(radius, dtype=like.dtype, device=like.device)
    if r.dim() == 0:
        r = r.expand(like.shape[0])
    return r.view(-1, *([1] * (like.dim() - 1)))


def flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of a batch ``v``: shape ``[B]``."""
    flat = v.reshape(v.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


class Geometry:
    """The l_p specific operations of PGD-style algorithms (``norm`` in :data:`NORMS`)."""

    def __init__(self, norm: str):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: Radius) -> torch.Tensor:
        """``x + size * sgn(grad)`` for linf, ``x + size * grad / ||grad||_2`` for l2 (FGSM, Sec. 3.3)."""
        size = _per_image(size, x)
        if self.norm == "linf":
            return x + size * grad.sign()
        g_norm = _per_image(flat_norm(grad, "l2"), x).clamp_min(_TINY)
        return x + size * grad / g_norm

    def project(self, x: torch.Tensor, center: torch.Tensor, radius: Radius) -> torch.Tensor:
        """Projection onto ``B_radius(center)``, then onto the box [0, 1].

        For linf the two sets are boxes and the composition is the exact projection onto their
        intersection. For l2 it is the standard PGD projection (the ball first, then the box);
        the result stays inside both sets because clipping toward a center that lies in [0, 1]
        never increases the distance to it. Differentiable in ``x`` and ``center``.
        """
        r = _per_image(radius, x)
        if self.norm == "linf":
            x = torch.minimum(torch.maximum(x, center - r), center + r)
        else:
            d = x - center
            d_norm = _per_image(flat_norm(d, "l2"), x)
            factor = torch.clamp(r / d_norm.clamp_min(_TINY), max=1.0)
            x = center + d * factor
        return x.clamp(0.0, 1.0)

    def random_in_ball(self, center: torch.Tensor, radius: Radius) -> torch.Tensor:
        """A point drawn uniformly from ``B_radius(center)`` (the eta of Algorithms 1-3), clipped to [0, 1].

        linf: independent uniform coordinates. l2: a uniform direction (normalised Gaussian)
        times ``radius * U^(1/d)``, which is the uniform distribution on the d-dimensional ball.
        """
        r = _per_image(radius, center)
        if self.norm == "linf":
            eta = (torch.rand_like(center) * 2 - 1) * r
        else:
            d = center[0].numel()
            direction = torch.randn_like(center)
            direction = direction / _per_image(flat_norm(direction, "l2"), center).clamp_min(_TINY)
            u = torch.rand(center.shape[0], dtype=center.dtype, device=center.device)
            eta = direction * r * _per_image(u.pow(1.0 / d), center)
        return (center + eta).clamp(0.0, 1.0)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distance ``||a - b||_p``: shape ``[B]``."""
        return flat_norm(a - b, self.norm)


@dataclass(frozen=True)
class ThreatModel:
    """Norm, adversary budget epsilon and defender budget delta (Definitions 2-3).

    The paper's experiments use ``delta == epsilon``; that is the default when ``delta`` is None.
    """

    norm: str = "linf"
    epsilon: float = 0.1
    delta: float | None = None

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a positive number, got {self.epsilon!r}")
        if self.delta is None:
            object.__setattr__(self, "delta", float(self.epsilon))
        if not (math.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be a non-negative number, got {self.delta!r}")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.norm)

    def default_inner_step(self) -> float:
        """The official code's inner PGD step: eps/4 for linf, 0.125 for l2 at eps 0.5 (i.e. eps/4)."""
        return self.epsilon / 4
