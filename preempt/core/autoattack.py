"""AutoAttack, standard version (Croce and Hein 2020), used by the paper's evaluation (Section 4).

The standard version runs, in order, each on the images the previous ones did not break:

1. APGD-CE, 100 iterations, 1 restart;
2. APGD-T (DLR loss, targeted), 100 iterations, 9 target classes, 1 restart each;
3. FAB-T, 100 iterations, 9 target classes;
4. Square, 5000 queries, p_init 0.8.

The components are torchattacks' implementations, configured here at those settings.
torchattacks' own ``AutoAttack`` wrapper builds APGD and APGD-T with 10 iterations (its default),
which is weaker than the original; this module composes the components itself instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .threat import flat_norm

STANDARD = {
    "apgd-ce": {"steps": 100, "n_restarts": 1},
    "apgd-t": {"steps": 100, "n_restarts": 1, "n_target_classes": 9},
    "fab-t": {"steps": 100, "n_restarts": 1, "n_target_classes": 9},
    "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8},
}


@dataclass
class AutoAttack:
    """``AutoAttack(model, norm, epsilon, num_classes).run(x, y)`` -> adversarial images.

    ``model`` maps [0, 1] images ``[B, C, H, W]`` to logits ``[B, num_classes]``. Images already
    misclassified are returned unchanged. ``components`` selects a subset of :data:`STANDARD`
    (in its order) for custom use.
    """

    model: torch.nn.Module
    norm: str = "linf"
    epsilon: float = 0.1
    num_classes: int = 10
    seed: int = 0
    components: tuple = tuple(STANDARD)

    def build(self):
        """The configured torchattacks objects, by name, in the standard order."""
        import torchattacks

        norm = {"linf": "Linf", "l2": "L2"}[self.norm]
        n_target = min(9, self.num_classes - 1)
        s = STANDARD
        attacks = {}
        for name in self.components:
            if name == "apgd-ce":
                a = torchattacks.APGD(self.model, norm=norm, eps=self.epsilon, loss="ce", seed=self.seed, **s[name])
            elif name == "apgd-t":
                a = torchattacks.APGDT(self.model, norm=norm, eps=self.epsilon, seed=self.seed, n_classes=self.num_classes,
                                       steps=s[name]["steps"], n_restarts=s[name]["n_restarts"])
                a.n_target_classes = n_target
            elif name == "fab-t":
                a = torchattacks.FAB(self.model, norm=norm, eps=self.epsilon, seed=self.seed, multi_targeted=True,
                                     n_classes=self.num_classes, steps=s[name]["steps"], n_restarts=s[name]["n_restarts"])
                a.n_target_classes = n_target
            elif name == "square":
                a = torchattacks.Square(self.model, norm=norm, eps=self.epsilon, seed=self.seed, loss="margin", **s[name])
            else:
                raise ValueError(f"unknown AutoAttack component {name!r}; choose from {list(STANDARD)}")
            attacks[name] = a
        return attacks

    def run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial images for ``x`` (robust ones returned as given)."""
        x = x.detach()
        x_adv = x.clone()
        with torch.no_grad():
            robust = self.model(x).argmax(1) == y
        for attack in self.build().values():
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            cand = attack(x[idx], y[idx]).detach()
            with torch.no_grad():
                fooled = self.model(cand).argmax(1) != y[idx]
                # Count only points that respect the threat model (tolerance for float rounding).
                fooled &= flat_norm(cand - x[idx], self.norm) <= self.epsilon * (1 + 1e-5) + 1e-6
                fooled &= (cand >= 0).flatten(1).all(1) & (cand <= 1).flatten(1).all(1)
            x_adv[idx[fooled]] = cand[fooled]
            robust[idx[fooled]] = False
        return x_adv



def logit_margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row of logits ``z``: the logit of ``y`` minus the largest other logit (negative: not classified ``y``)."""
    return z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -float("inf")).max(1).values


def margin_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`logit_margin` of ``model(x)``."""
    with torch.no_grad():
        return logit_margin(model(x), y)


def apgd_single(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, epsilon: float,
                num_classes: int, steps: int, rank: Optional[int] = None, seed: int = 0) -> tuple:
    """One APGD run (1 restart, ``steps`` iterations): APGD-CE with ``rank=None``, else APGD-T (DLR, targeted)
    toward the ``rank``-th most likely wrong class at ``x``. Returns ``(fooled, margin)``: ``True`` where it found
    a point inside the budget that is not classified ``y``, and the lowest margin (:func:`margin_of`) of the two
    points it ends on (its highest loss and its best adversarial candidate): how close the image came to falling.
    It draws its random start from torch's global generator (the caller seeds it); for APGD-CE with the generator
    seeded with ``seed`` it is AutoAttack's APGD-CE run on correctly classified ``x`` bit for bit."""
    import torchattacks

    kind = {"linf": "Linf", "l2": "L2"}[norm]
    if rank is None:
        a = torchattacks.APGD(model, norm=kind, eps=epsilon, loss="ce", steps=steps, n_restarts=1, seed=seed)
    else:
        a = torchattacks.APGDT(model, norm=kind, eps=epsilon, seed=seed, n_classes=num_classes, steps=steps,
                               n_restarts=1)
        a.target_class = rank + 1  # torchattacks counts the predicted class as 1
    with torch.enable_grad():
        best, acc, _, adv = a.attack_single_run(x, y)
    with torch.no_grad():
        z = model(adv)  # one pass for both the verdict and the margin at the candidate
        fooled = (z.argmax(1) != y) | (acc == 0)
        fooled &= flat_norm(adv - x, norm) <= epsilon * (1 + 1e-5) + 1e-6
    return fooled, torch.minimum(margin_of(model, best, y), logit_margin(z, y))


def apgd_t_target(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, epsilon: float,
                  num_classes: int, rank: int, steps: int, seed: int = 0) -> torch.Tensor:
    """One APGD-T run (DLR, targeted, 1 restart, ``steps`` iterations) toward the ``rank``-th most likely wrong
    class at ``x``: ``True`` where it found a point inside the budget that is not classified ``y``. It draws its
    random start from torch's global generator (the caller seeds it)."""
    return apgd_single(model, x, y, norm, epsilon, num_classes, steps, rank, seed)[0]


def apgd_t_by_rank(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, epsilon: float,
                   num_classes: int, steps_by_rank: tuple, seed: int = 0) -> torch.Tensor:
    """APGD-T toward each runner-up class with its own iteration count (:func:`apgd_t_target`):
    ``steps_by_rank[r - 1]`` iterations toward the ``r``-th most likely wrong class (at ``x``), for
    ``r`` up to ``min(len(steps_by_rank), num_classes - 1)``. Each target runs on the images the previous
    ones left, as AutoAttack's APGD-T does (same seed handling); ``(100,) * 9`` is its standard version.
    Returns a mask: ``True`` where every target failed and ``x`` is still classified ``y``."""
    return apgd_t_margins(model, x, y, norm, epsilon, num_classes, steps_by_rank, seed)[0]


def apgd_t_margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, epsilon: float,
                   num_classes: int, steps_by_rank: tuple, seed: int = 0) -> tuple:
    """:func:`apgd_t_by_rank` and, per image it leaves robust, the lowest margin any target's run ended on
    (``(robust, margin)``; ``margin`` is meaningful where ``robust``)."""
    margin = margin_of(model, x, y)
    robust = margin > 0
    torch.random.manual_seed(seed)
    for rank, steps in enumerate(steps_by_rank[:num_classes - 1], start=1):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        fooled, m = apgd_single(model, x[idx], y[idx], norm, epsilon, num_classes, steps, rank, seed)
        robust[idx[fooled]] = False
        margin[idx] = torch.minimum(margin[idx], m)
    return robust, margin
