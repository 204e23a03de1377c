"""PGD attacks (Madry et al. 2017) as used by the paper (Sections 3.3, 3.6 and 4).

* :func:`pgd_dynamics` is the T-step inner attack of Algorithm 1 written as a differentiable
  function of its center ``x_center``: the robustifier backpropagates through it. With
  ``second_order=False`` (the default, Section 3.4) the loss gradient inside each FGSM step is a
  constant, so only the Jacobians of the projections and of the random start reach
  ``x_center``; with ``second_order=True`` the graph of every step is kept (exact gradient).
* :func:`pgd` is the evaluation attack: untargeted, random start, restarts, the worst case kept.
* :func:`smoothed_loss` is the cross-entropy of the smoothed soft classifier (Eq. 3) estimated
  with M Gaussian draws; passing it as ``loss_fn`` gives randomized PGD (Salman et al. 2019).

Models take a float batch ``[B, C, H, W]`` in [0, 1] and return logits ``[B, K]``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .threat import Geometry, Radius

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy ``l(x, y)``: shape ``[B]``."""
    return F.cross_entropy(model(x), y, reduction="none")


def smoothed_loss(sigma: float, samples: int) -> LossFn:
    """Cross-entropy of the smoothed soft classifier ``C~(x) = E_xi[softmax(f(x + xi))]`` (Eq. 3).

    The expectation is the mean over ``samples`` draws ``xi ~ N(0, sigma^2 I)``; all draws of a
    batch run as one forward pass of ``B * samples`` images.
    """

    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        noisy = x.unsqueeze(1) + sigma * torch.randn((b, samples) + x.shape[1:], dtype=x.dtype, device=x.device)
        probs = F.softmax(model(noisy.reshape((b * samples,) + x.shape[1:])), dim=1)
        probs = probs.view(b, samples, -1).mean(dim=1)
        return -torch.log(probs.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12))

    return loss


def pgd_dynamics(
    model: torch.nn.Module,
    x_center: torch.Tensor,
    y: torch.Tensor,
    geometry: Geometry,
    epsilon: Radius,
    steps: int,
    step_size: Radius,
    x_start: Optional[torch.Tensor] = None,
    loss_fn: LossFn = ce_loss,
    second_order: bool = False,
) -> torch.Tensor:
    """T steps of ``x <- Pi_{x_center, eps}(x + alpha * step(grad l(x, y)))`` (the dynamics of Sec. 3.3).

    ``x_start`` is ``x^{a,0}``; when None it is drawn uniformly from ``B_eps(x_center)``
    (as the offset ``x_center + eta`` so that it stays a function of ``x_center``). The result
    keeps the autograd graph to ``x_center`` when ``x_center`` requires grad.
    """
    if x_start is None:
        with torch.no_grad():
            eta = geometry.random_in_ball(x_center.detach(), epsilon) - x_center.detach()
        x_adv = (x_center + eta).clamp(0.0, 1.0)
    else:
        x_adv = x_start
    for _ in range(steps):
        if not x_adv.requires_grad:
            x_adv = x_adv.detach().requires_grad_(True)
        loss = loss_fn(model, x_adv, y).sum()
        (grad,) = torch.autograd.grad(loss, x_adv, create_graph=second_order)
        x_adv = geometry.project(geometry.step(x_adv, grad, step_size), x_center, epsilon)
    return x_adv


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    geometry: Geometry,
    epsilon: Radius,
    steps: int = 20,
    step_size: Optional[Radius] = None,
    restarts: int = 1,
    random_start: bool = True,
    loss_fn: LossFn = ce_loss,
    predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Untargeted PGD around ``x`` inside ``B_eps(x)`` and [0, 1]; returns adversarial images.

    Defaults are the paper's evaluation attack: 20 steps of ``5 * eps / 20 = eps / 4``. With
    several restarts, an image keeps the first restart that fools ``predict`` (default: the
    argmax of ``model``); images never fooled keep the last restart's point.
    """
    if step_size is None:
        step_size = epsilon / 4
    predict = predict or (lambda z: model(z).argmax(dim=1))
    x = x.detach()
    best = x.clone()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        start = geometry.random_in_ball(x, epsilon) if random_start else x.clone()
        with torch.enable_grad():
            x_adv = pgd_dynamics(model, x, y, geometry, epsilon, steps, step_size, x_start=start, loss_fn=loss_fn)
        x_adv = x_adv.detach()
        with torch.no_grad():
            now = predict(x_adv) != y
        take = now & ~fooled
        best[take] = x_adv[take]
        best[~fooled & ~now] = x_adv[~fooled & ~now]
        fooled |= now
        if bool(fooled.all()):
            break
    return best
