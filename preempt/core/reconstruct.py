"""Reconstruction of the original and the adaptive white-box attack: Algorithms 3 and 4 (Section 3.7).

The white-box adversary knows Algorithm 1 and its hyperparameters. It runs Algorithm 1's
dynamics backwards from ``x_rob``: ``x_hat`` starts at ``x_rob`` and moves by projected gradient
*ascent* on the robust loss inside ``B_delta(x_rob)`` (Algorithm 3). It then attacks ``x_hat``
with a standard attack of budget ``eps'`` (Algorithm 4). Because the adversary does not know
``x_orig``, it sweeps ``eps'`` over a grid (default ``{eps/4, eps/2, 3eps/4, eps}``); an
adversarial example counts only if it is misclassified *and* lies inside ``B_eps(x_orig)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .attacks import pgd
from .robustify import RobustifyConfig, predict_labels, robustify
from .threat import ThreatModel


def reconstruct(
    model: torch.nn.Module,
    x_rob: torch.Tensor,
    threat: ThreatModel,
    iterations: int = 100,
    steps: int = 20,
    samples: int = 1,
    inner_step: Optional[float] = None,
    lr: Optional[float] = None,
    y: Optional[torch.Tensor] = None,
    sigma: Optional[float] = None,
    noise_samples: int = 8,
) -> torch.Tensor:
    """Algorithm 3: estimate ``x_orig`` from ``x_rob`` ``[B, C, H, W]``; labels default to ``c(x_rob)``.

    Same dynamics as :func:`robustify.robustify` (first-order gradient, N random starts as a
    batch), but the update ascends the robust loss and is projected onto ``B_delta(x_rob)``.
    Step ``beta`` defaults to ``2.5 * delta / iterations`` (sign step for linf, normalised for l2).
    With ``sigma`` the robust loss is the smoothed classifier's (randomized PGD, Section 3.6).
    """
    cfg = RobustifyConfig(iterations=iterations, steps=steps, samples=samples, inner_step=inner_step,
                          optimizer="pgd", lr=lr, init="original", sigma=sigma, noise_samples=noise_samples)
    if y is None:
        y = predict_labels(model, x_rob, sigma)
    return robustify(model, x_rob, threat, cfg, y=y, maximize=True).x_rob


def default_eps_sweep(epsilon: float) -> list:
    """The official evaluation's final budgets ``{eps/4, eps/2, 3eps/4, eps}``."""
    return [epsilon * k / 4 for k in (1, 2, 3, 4)]


def whitebox_attack(
    model: torch.nn.Module,
    x_rob: torch.Tensor,
    x_orig: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    attack: Optional[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = None,
    eps_sweep: Optional[Sequence[float]] = None,
    x_hat: Optional[torch.Tensor] = None,
    predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    count: Optional[torch.Tensor] = None,
    **reconstruct_kwargs,
) -> dict:
    """Algorithm 4 with the validity rule; returns per-budget and worst-case robustness.

    ``attack(x, y, eps')`` defaults to PGD-20 (step ``eps'/4``). ``x_orig`` is used only to judge
    validity, never by the attack. Returns ``{"x_hat", "robust": {eps': bool[B]}, "robust_worst":
    bool[B], "dist_hat": [B], "dist_adv": {eps': [B]}}`` where an image is robust at ``eps'`` unless
    the attack found a misclassified point inside ``B_eps(x_orig)``; ``robust_worst`` is the
    intersection over the sweep (the lowest accuracy, as the paper reports). ``predict`` (default:
    the argmax of ``model``) judges misclassification, e.g. a smoothed classifier's prediction.

    The attack runs only on the images whose outcome can matter: those in ``count`` (a bool mask,
    default all; e.g. the correctly classified ones when only those are scored) whose reconstruction
    lies within ``eps + eps'`` of ``x_orig``. For the others no point of ``B_eps'(x_hat)`` is inside
    ``B_eps(x_orig)`` (triangle inequality), so no attack could yield a valid example and they are
    robust at that ``eps'`` whatever it does; their ``dist_adv`` is ``dist_hat``. The result is the
    one of attacking every image; only the time differs.
    """
    geometry = threat.geometry
    if attack is None:
        def attack(x, yy, eps):
            return pgd(model, x, yy, geometry, eps, steps=20, step_size=eps / 4)
    if x_hat is None:
        x_hat = reconstruct(model, x_rob, threat, **reconstruct_kwargs)
    eps_sweep = list(eps_sweep or default_eps_sweep(threat.epsilon))
    tol = 1e-6 + 1e-5 * threat.epsilon
    robust, dist_adv = {}, {}
    worst = torch.ones(x_rob.shape[0], dtype=torch.bool, device=x_rob.device)
    with torch.no_grad():
        dist_hat = geometry.distance(x_hat, x_orig)
    scored = torch.ones_like(worst) if count is None else count.to(worst.device).bool()
    for eps in eps_sweep:
        ok = torch.ones_like(worst)
        d = dist_hat.clone()
        idx = (scored & (dist_hat <= threat.epsilon + eps + 2 * tol)).nonzero().flatten()
        if len(idx):
            x_adv = attack(x_hat[idx], y[idx], eps)
            with torch.no_grad():
                d[idx] = geometry.distance(x_adv, x_orig[idx])
                wrong = (predict(x_adv) if predict is not None else model(x_adv).argmax(1)) != y[idx]
            ok[idx] = ~(wrong & (d[idx] <= threat.epsilon + tol))
        robust[eps], dist_adv[eps] = ok, d
        worst &= ok
    return {"x_hat": x_hat, "robust": robust, "robust_worst": worst, "dist_hat": dist_hat,
            "dist_adv": dist_adv}
