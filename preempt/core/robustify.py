"""Preemptive robustification: Algorithm 1 and Equation (2) of the paper (Sections 3.3, 3.4, 3.6).

Find ``x_rob`` in ``B_delta(x_orig)`` that minimises ``sup_{x_adv in B_eps(x_rob)} l(x_adv, c(x_orig))``.
:func:`robustify` is the loop of Algorithm 1; its three parts are objects of their own:

* :class:`InnerObjective`: the supremum, approximated by T-step PGD from N random starts
  (:func:`attacks.pgd_dynamics`), the loss at the end points aggregated over the starts (mean, as in
  the paper). Its gradient with respect to ``x_rob`` is first-order by default (Section 3.4).
* the outer update, :class:`ProjectedStep` (Algorithm 1's
  ``x_rob <- Pi_{x_orig, delta}(x_rob - beta * step(grad))``, sign step for linf, normalised for l2) or
  :class:`TanhRMSprop` (the official code's linf update: ``x_rob = lo + (tanh(w) + 1) / 2 * (hi - lo)``
  on the box ``B_delta(x_orig) ∩ [0, 1]``, RMSprop on ``w``; the budget holds by construction);
* :class:`EarlyStopping`: per image, beyond the paper. An image whose inner-attack loss stays below
  ``stop_loss`` for ``stop_patience`` consecutive iterations is attacked once more from a fresh random
  start and stops if that loss is below ``stop_loss`` too (ln 2 by default: by Lemma 1 the attack's
  end point is then still classified ``y``; 0.1 for l2 on plain classifiers, where AutoAttack broke
  images stopped at ln 2, docs/science.md). An image also stops when its mean loss over the last
  ``plateau_window`` iterations is not ``plateau_tol`` below the mean of the window before.
  ``stop_patience=0, plateau_window=0`` runs the paper's loop.

Everything is batched: a batch of B images runs its N random starts as one batch of ``B * N``; an
image that stops costs no more passes while the rest of the batch runs on. For smoothed classifiers
(Section 3.6) ``sigma`` and ``noise_samples`` make the inner attack randomized PGD on the smoothed soft
classifier (Eq. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .attacks import LossFn, ce_loss, pgd_dynamics, smoothed_loss
from .threat import Geometry, ThreatModel, flat_norm

Progress = Callable[[int, int, float], None]
INNER_LOSSES = ("ce", "targeted")
AGGREGATES = ("mean", "max")
# The inner-attack loss under which an l2 image on a plain classifier may stop: at ln 2 AutoAttack broke
# most of the images it broke after stopping; 0.1 raised the l2 AutoAttack gap closure from 0.73 to 0.84 at
# 1,230 passes per image (docs/science.md). linf gained nothing from it and keeps ln 2.
L2_STOP_LOSS = 0.1


@dataclass(frozen=True)
class RobustifyConfig:
    """Hyperparameters of Algorithm 1. Defaults are the official code's settings (DESIGN.md)."""

    iterations: int = 100  # MAXITER
    steps: int = 20  # T, inner PGD steps
    samples: int = 1  # N, random starts per outer iteration
    inner_step: Optional[float] = None  # alpha; None -> epsilon / 4
    optimizer: Optional[str] = None  # "pgd" | "rmsprop"; None -> rmsprop for linf, pgd for l2
    lr: Optional[float] = None  # beta; None -> 0.1 (rmsprop) or 2.5 * delta / iterations (pgd)
    init: str = "original"  # "original" (x_rob = x_orig) or "random" (uniform in B_delta(x_orig))
    second_order: bool = False  # exact update gradient (Section 3.4); meaningful for l2
    sigma: Optional[float] = None  # smoothing noise level (Section 3.6); None: plain classifier
    noise_samples: int = 8  # M, Gaussian draws per randomized-PGD step
    stop_patience: int = 3  # consecutive iterations below stop_loss before the confirming attack (0: off)
    stop_loss: Optional[float] = None  # None -> default_stop_loss()
    plateau_window: int = 20  # W: stop when the last W iterations' mean loss is not plateau_tol below
    plateau_tol: float = 0.02  # the mean of the W before (window 0: off)
    inner_loss: str = "ce"  # "ce" (the paper) or "targeted" (start k aims at the k-th runner-up class)
    aggregate: str = "mean"  # over the N starts: "mean" (the paper) or "max" (the worst start drives the update)
    # (H, W): an image larger than this gets its perturbation at this size, upsampled bilinearly (SmoothUpdate)
    smooth_size: Optional[Tuple[int, int]] = None
    # texture masking: the budget at each pixel is delta * m, m from the local contrast (texture_mask); this is m
    # where the image is flat (None: off, the whole budget everywhere)
    texture_floor: Optional[float] = None

    def resolved(self, threat: ThreatModel) -> "RobustifyConfig":
        """A copy with every ``None`` replaced by its norm-dependent default, validated."""
        opt = self.optimizer or ("rmsprop" if threat.norm == "linf" else "pgd")
        if opt not in ("pgd", "rmsprop"):
            raise ValueError(f"optimizer must be 'pgd' or 'rmsprop', got {opt!r}")
        if opt == "rmsprop" and threat.norm != "linf":
            raise ValueError("the tanh-reparameterised RMSprop optimiser keeps an linf budget; use optimizer='pgd' for l2")
        if self.init not in ("original", "random"):
            raise ValueError(f"init must be 'original' or 'random', got {self.init!r}")
        for name in ("iterations", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.steps < 0:
            raise ValueError("steps must be non-negative")
        if self.inner_loss not in INNER_LOSSES:
            raise ValueError(f"inner_loss must be one of {INNER_LOSSES}, got {self.inner_loss!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.texture_floor is not None and not 0 < self.texture_floor <= 1:
            raise ValueError(f"texture_floor must be in (0, 1], got {self.texture_floor!r}")
        if self.stop_patience < 0 or self.plateau_window < 0:
            raise ValueError("stop_patience and plateau_window must be non-negative")
        return replace(
            self, optimizer=opt,
            lr=self.lr if self.lr is not None else (0.1 if opt == "rmsprop" else 2.5 * threat.delta / self.iterations),
            inner_step=self.inner_step if self.inner_step is not None else threat.default_inner_step(),
            stop_loss=self.stop_loss if self.stop_loss is not None else default_stop_loss(threat, self.sigma),
        )


def default_stop_loss(threat: ThreatModel, sigma: Optional[float] = None) -> float:
    """ln 2 (Lemma 1: a cross-entropy below it means class ``y``), or :data:`L2_STOP_LOSS` for l2 on a
    plain classifier."""
    return L2_STOP_LOSS if threat.norm == "l2" and sigma is None else math.log(2)


@dataclass
class RobustifyResult:
    """Output of :func:`robustify`: images ``[B, C, H, W]`` and per-image diagnostics ``[B]``."""

    x_rob: torch.Tensor
    label: torch.Tensor  # the label protected: c(x_orig) unless given
    robust_loss: torch.Tensor  # cross-entropy at the inner attack's end points (aggregated over starts), last iteration
    linf: torch.Tensor  # ||x_rob - x_orig||_inf
    l2: torch.Tensor  # ||x_rob - x_orig||_2
    passes: float  # forward-backward passes of the classifier per image (mean over the batch)
    history: list = field(default_factory=list)  # mean robust loss per outer iteration (images still running)
    passes_per_image: Optional[torch.Tensor] = None  # [B]
    stopped_at: Optional[torch.Tensor] = None  # [B] outer iteration at which each image stopped


def predict_labels(model: torch.nn.Module, x: torch.Tensor, sigma: Optional[float] = None,
                   noise_samples: int = 32) -> torch.Tensor:
    """``c(x)``, or for a smoothed model the argmax of the Monte-Carlo smoothed soft classifier."""
    with torch.no_grad():
        if sigma is None:
            return model(x).argmax(dim=1)
        probs = 0
        for _ in range(noise_samples):
            probs = probs + torch.softmax(model(x + sigma * torch.randn_like(x)), dim=1)
        return probs.argmax(dim=1)


# ------------------------------------------------------------------------------------ the inner objective
def targeted_margin(targets: torch.Tensor) -> LossFn:
    """``z_t - z_y`` for a fixed target class per image: the ascent direction of a targeted attack."""
    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = model(x)
        return z.gather(1, targets[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)
    return loss


def runner_up_targets(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """For ``x`` repeated n times per image, start k of an image aims at its (k+1)-th most likely wrong class."""
    with torch.no_grad():
        z = model(x[::n])
        z = z.masked_fill(F.one_hot(y[::n], z.shape[1]).bool(), float("-inf"))
        ranked = z.argsort(dim=1, descending=True)[:, : z.shape[1] - 1]
    k = torch.arange(n, device=x.device) % ranked.shape[1]
    return ranked[:, k].reshape(-1)


class InnerObjective:
    """``sup_{x_adv in B_eps(x_rob)} l(x_adv, y)`` of Eq. 2, approximated by the inner attack of Algorithm 1.

    ``objective(x_rob, y)`` runs T-step PGD from N random starts around each of the ``b`` images
    ``x_rob`` ``[b, C, H, W]`` (the starts as one batch of ``b * N``) and returns ``(objective, ce)``,
    both ``[b]``, aggregated over the starts: what the outer update descends (differentiable in
    ``x_rob``) and the cross-entropy reported as the robust loss. Subclasses may change
    :meth:`attack_loss` (what the attack ascends) and :meth:`outer_loss` (what the update descends).
    """

    def __init__(self, model: torch.nn.Module, threat: ThreatModel, cfg: RobustifyConfig, sent_as=None):
        self.model, self.threat, self.cfg = model, threat, cfg
        # a transforms.Transform applied to x_rob before the attack: the file in transit (None: x_rob itself)
        self.sent_as = None if sent_as is None or sent_as.identity else sent_as
        self.loss: LossFn = ce_loss if cfg.sigma is None else smoothed_loss(cfg.sigma, cfg.noise_samples)

    @property
    def passes(self) -> int:
        """Classifier passes per image of one call: T + 1 per start (and per noise draw)."""
        return (self.cfg.steps + 1) * self.cfg.samples * (self.cfg.noise_samples if self.cfg.sigma else 1)

    def attack_loss(self, starts: torch.Tensor, y: torch.Tensor) -> LossFn:
        """The loss the inner attack ascends from ``starts`` (each image repeated N times)."""
        if self.cfg.sigma is None and self.cfg.inner_loss == "targeted":
            return targeted_margin(runner_up_targets(self.model, starts.detach(), y, self.cfg.samples))
        return self.loss

    def outer_loss(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple:
        """``(objective, ce)`` per end point."""
        ce = self.loss(self.model, x_adv, y)
        return ce, ce

    def __call__(self, x_rob: torch.Tensor, y: torch.Tensor) -> tuple:
        n, cfg = self.cfg.samples, self.cfg
        if self.sent_as is not None:
            x_rob = self.sent_as(x_rob)
        y, centers = y.repeat_interleave(n), x_rob.repeat_interleave(n, dim=0)
        x_adv = pgd_dynamics(self.model, centers, y, self.threat.geometry, self.threat.epsilon, cfg.steps,
                             cfg.inner_step, loss_fn=self.attack_loss(centers, y), second_order=cfg.second_order)
        objective, ce = self.outer_loss(x_adv, y)
        pick = (lambda t: t.view(-1, n).mean(dim=1)) if cfg.aggregate == "mean" else (lambda t: t.view(-1, n).amax(dim=1))
        return pick(objective), pick(ce).detach()


# ------------------------------------------------------------------------------------ the outer update
class ProjectedStep:
    """Algorithm 1's update ``x_rob <- Pi_{x_orig, delta}(x_rob -/+ beta * step(grad))`` (``ascend``: +)."""

    def __init__(self, x_orig: torch.Tensor, x_init: torch.Tensor, geometry: Geometry, delta: float, lr: float,
                 ascend: bool = False):
        self.x_orig, self.x, self.geometry, self.delta, self.lr, self.sign = x_orig, x_init.clone(), geometry, delta, lr, (
            1 if ascend else -1)

    def variable(self) -> torch.Tensor:
        """The current point as a leaf the objective's gradient is taken at."""
        return self.x.detach().requires_grad_(True)

    def step(self, objective: torch.Tensor, x_var: torch.Tensor, rows: torch.Tensor) -> None:
        """Move the images ``rows`` along the gradient of ``objective`` (computed on ``x_var[rows]``)."""
        (grad,) = torch.autograd.grad(objective.sum(), x_var)
        with torch.no_grad():
            moved = self.geometry.project(self.geometry.step(self.x[rows], (self.sign * grad)[rows], self.lr),
                                          self.x_orig[rows], self.delta)
            self.x = self.x.clone()
            self.x[rows] = moved

    def current(self) -> torch.Tensor:
        return self.x.detach()


class TanhRMSprop:
    """The official code's linf update: RMSprop on ``w`` with ``x_rob = lo + (tanh(w) + 1) / 2 * (hi - lo)``.

    The map sends R^d onto the feasible box ``[lo, hi] = B_delta(x_orig) ∩ [0, 1]``, so no coordinate is
    ever clipped (a clip would zero its gradient for good, e.g. on black background pixels).
    """

    def __init__(self, x_orig: torch.Tensor, x_init: torch.Tensor, delta: float, lr: float):
        self.lo, self.hi = (x_orig - delta).clamp_min(0.0), (x_orig + delta).clamp_max(1.0)
        ratio = ((x_init - self.lo) / (self.hi - self.lo).clamp_min(1e-12) * 2 - 1).clamp(-0.9995, 0.9995)
        self.w = torch.atanh(ratio).requires_grad_(True)
        self.opt = torch.optim.RMSprop([self.w], lr=lr)

    def variable(self) -> torch.Tensor:
        return self.lo + (torch.tanh(self.w) + 1) / 2 * (self.hi - self.lo)

    def step(self, objective: torch.Tensor, x_var: torch.Tensor, rows: torch.Tensor) -> None:
        # Stopped images get no gradient; RMSprop without momentum then leaves them where they are.
        self.opt.zero_grad(set_to_none=True)
        objective.sum().backward()
        self.opt.step()

    def current(self) -> torch.Tensor:
        with torch.no_grad():
            return self.variable().detach()


class SmoothUpdate:
    """The perturbation kept at a coarser size ``(h, w)`` (the classifier's input) and upsampled bilinearly to the
    image: ``x_rob = clip(x_orig + up(d), 0, 1)``.

    A model that sees the image resized to ``(h, w)`` only responds to what survives the resize, so a full-size
    perturbation spends the budget on every pixel and the resize's gradient stamps its footprint on the image
    (blocks, one per input pixel). ``up`` is a convex combination of ``d``'s values, so ``|d| <= delta`` keeps
    ``x_rob`` in the linf ball; for l2, ``d`` is scaled until ``||up(d)|| <= delta``. linf with
    ``optimizer="rmsprop"``: ``d = delta * tanh(w)`` and RMSprop on ``w`` (the official update, coarse); else
    projected steps on ``d`` (step size in full-resolution units).
    """

    def __init__(self, x_orig: torch.Tensor, x_init: torch.Tensor, geometry: Geometry, delta: float, lr: float,
                 size: Tuple[int, int], optimizer: str):
        self.x_orig, self.geometry, self.delta, self.size = x_orig, geometry, delta, tuple(size)
        self.full = tuple(x_orig.shape[-2:])
        d0 = F.interpolate(x_init - x_orig, size=self.size, mode="area")
        self.rmsprop = optimizer == "rmsprop"
        if self.rmsprop:
            self.w = torch.atanh((d0 / delta).clamp(-0.9995, 0.9995)).requires_grad_(True)
            self.opt = torch.optim.RMSprop([self.w], lr=lr)
        else:
            scale = math.sqrt(self.size[0] * self.size[1] / (self.full[0] * self.full[1]))
            self.d, self.lr = self._fit(d0), lr * scale

    def _up(self, d: torch.Tensor) -> torch.Tensor:
        return F.interpolate(d, size=self.full, mode="bilinear", align_corners=False)

    def _fit(self, d: torch.Tensor) -> torch.Tensor:
        if self.geometry.norm == "linf":
            return d.clamp(-self.delta, self.delta)
        norms = flat_norm(self._up(d), "l2").clamp_min(1e-12)
        return d * (self.delta / norms).clamp(max=1.0).view(-1, 1, 1, 1)

    def _x(self, d: torch.Tensor) -> torch.Tensor:
        return (self.x_orig + self._up(d)).clamp(0.0, 1.0)

    def variable(self) -> torch.Tensor:
        if self.rmsprop:
            return self._x(self.delta * torch.tanh(self.w))
        self.leaf = self.d.detach().requires_grad_(True)
        return self._x(self.leaf)

    def step(self, objective: torch.Tensor, x_var: torch.Tensor, rows: torch.Tensor) -> None:
        if self.rmsprop:
            self.opt.zero_grad(set_to_none=True)
            objective.sum().backward()
            self.opt.step()
            return
        (grad,) = torch.autograd.grad(objective.sum(), self.leaf)
        with torch.no_grad():
            self.d = self.d.clone()
            self.d[rows] = self._fit(self.geometry.step(self.d[rows], -grad[rows], self.lr))

    def current(self) -> torch.Tensor:
        with torch.no_grad():
            return self._x(self.delta * torch.tanh(self.w) if self.rmsprop else self.d).detach()


# The local contrast (standard deviation of the luminance in a Gaussian window, sigma 1.5 pixels as SSIM's)
# at and above which a pixel gets the whole budget under texture masking.
TEXTURE_CONTRAST = 0.08


def texture_mask(x: torch.Tensor, floor: float, contrast: float = TEXTURE_CONTRAST) -> torch.Tensor:
    """The share of the budget each pixel of ``x`` ``[B, C, H, W]`` may use, ``[B, 1, H, W]`` in ``[floor, 1]``.

    ``floor + (1 - floor) * min(1, s / contrast)`` with ``s`` the local standard deviation of the luminance
    (the channels' mean) in a Gaussian window of sigma 1.5 pixels: flat areas, where a change shows most (and
    SSIM's structure term is most sensitive), get ``floor``; textured areas and edges the whole budget.
    """
    lum = x.mean(1, keepdim=True)
    r = 5
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (r, r, r, r), mode="replicate")
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mean = blur(lum)
    std = (blur(lum * lum) - mean * mean).clamp_min(0).sqrt()
    return floor + (1 - floor) * (std / contrast).clamp(max=1.0)


class MaskedUpdate:
    """Any outer update with the change shaped per pixel: ``x_rob = x_orig + m * (u - x_orig)``, ``u`` the wrapped
    update's point and ``m`` in [0, 1] (:func:`texture_mask`).

    ``x_rob`` is a convex combination of ``x_orig`` and ``u``, so it stays in [0, 1], and ``|x_rob - x_orig|`` is
    at most ``|u - x_orig|`` at every pixel, so every norm's budget that ``u`` keeps, ``x_rob`` keeps.
    """

    def __init__(self, inner, x_orig: torch.Tensor, mask: torch.Tensor):
        self.inner, self.x_orig, self.mask = inner, x_orig, mask

    def _shape(self, u: torch.Tensor) -> torch.Tensor:
        return self.x_orig + self.mask * (u - self.x_orig)

    def variable(self) -> torch.Tensor:
        self.leaf = self.inner.variable()
        return self._shape(self.leaf)

    def step(self, objective: torch.Tensor, x_var: torch.Tensor, rows: torch.Tensor) -> None:
        self.inner.step(objective, self.leaf, rows)

    def current(self) -> torch.Tensor:
        return self._shape(self.inner.current()).detach()


# ------------------------------------------------------------------------------------ the stopping rule
class EarlyStopping:
    """Which images of a batch of ``b`` still run (see the module docstring); ``enabled=False``: all, always."""

    def __init__(self, cfg: RobustifyConfig, b: int, device, enabled: bool = True):
        self.cfg, self.enabled = cfg, enabled
        self.active = torch.ones(b, dtype=torch.bool, device=device)
        self.calm = torch.zeros(b, dtype=torch.long, device=device)  # consecutive iterations below stop_loss
        self.stopped_at = torch.full((b,), cfg.iterations, dtype=torch.long, device=device)
        self.trace = torch.zeros(b, cfg.iterations, device=device)  # each image's loss per iteration

    def running(self) -> torch.Tensor:
        return self.active.nonzero().flatten()

    def _stop(self, rows: torch.Tensor, it: int) -> None:
        self.active[rows] = False
        self.stopped_at[rows] = it + 1

    def observe(self, it: int, rows: torch.Tensor, objective: torch.Tensor, losses: torch.Tensor,
                confirm: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After iteration ``it`` of the images ``rows``; ``confirm(rows)`` attacks them from a fresh start."""
        cfg = self.cfg
        self.trace[rows, it] = losses
        if not self.enabled:
            return
        w = cfg.plateau_window
        if w and it + 1 >= 2 * w:
            recent = self.trace[rows, it + 1 - w:it + 1].mean(1)
            before = self.trace[rows, it + 1 - 2 * w:it + 1 - w].mean(1)
            self._stop(rows[recent > before * (1 - cfg.plateau_tol)], it)
            keep = self.active[rows]
            rows, objective = rows[keep], objective[keep]
        if cfg.stop_patience and it + 1 < cfg.iterations:  # the last iteration ends anyway
            calm = self.calm[rows]
            self.calm[rows] = torch.where(objective < cfg.stop_loss, calm + 1, torch.zeros_like(calm))
            ready = rows[self.calm[rows] >= cfg.stop_patience]
            if ready.numel():
                robust = confirm(ready) < cfg.stop_loss
                self._stop(ready[robust], it)
                self.calm[ready[~robust]] = 0


# ------------------------------------------------------------------------------------ Algorithm 1
def robustify(
    model: torch.nn.Module,
    x_orig: torch.Tensor,
    threat: ThreatModel,
    config: RobustifyConfig | None = None,
    y: Optional[torch.Tensor] = None,
    progress: Optional[Progress] = None,
    maximize: bool = False,
    x_init: Optional[torch.Tensor] = None,
    objective: Optional[InnerObjective] = None,
    transform=None,
    sent_as=None,
) -> RobustifyResult:
    """Algorithm 1 on a batch ``x_orig`` ``[B, C, H, W]`` in [0, 1]; ``y`` defaults to ``c(x_orig)``.

    ``progress(iteration, total, mean_loss)`` is called after each outer iteration.
    The model is used as given (call ``model.eval()`` first); its parameters are not modified.
    ``maximize=True`` ascends the robust loss instead (no early stopping): the reconstruction of
    Algorithm 3, where ``x_orig`` is the robustified image whose delta-ball is searched.
    ``x_init`` starts the search there instead of at ``cfg.init`` (a warm start); it is projected onto
    ``B_delta(x_orig)`` and [0, 1] first. ``objective`` replaces the paper's :class:`InnerObjective`.
    ``transform`` (a :class:`transforms.Transform`, e.g. ``Transform("jpeg:75-95")``): the platform transforms
    the file after the man in the middle's change and before its classifier, so the inner attack and the
    outer objective both see ``model(T(x))``, a range drawn afresh at every pass (an expectation over the
    range). ``y`` still defaults to the label of the untransformed original. ``sent_as`` (a ``Transform``, e.g.
    ``Transform("jpeg:85")``): the user's client encodes ``x_rob`` so before it travels; the man in the middle
    attacks ``sent_as(x_rob)``, so the inner attack starts there (the gradient through the codec's stand-in).
    """
    cfg = (config or RobustifyConfig()).resolved(threat)
    if maximize and cfg.optimizer != "pgd":
        raise ValueError("maximize=True (reconstruction) uses optimizer='pgd'")
    geometry, delta = threat.geometry, threat.delta
    x_orig = x_orig.detach()
    y = (predict_labels(model, x_orig, cfg.sigma) if y is None else y).to(x_orig.device)
    if transform is not None and not transform.identity:
        from .transforms import Transformed

        model = Transformed(model, transform)
    if x_init is not None:
        if x_init.shape != x_orig.shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, x_orig {tuple(x_orig.shape)}")
        x_init = geometry.project(x_init.detach().to(x_orig.device), x_orig, delta)
    else:
        x_init = geometry.random_in_ball(x_orig, delta) if cfg.init == "random" else x_orig.clone()
    mask = texture_mask(x_orig, cfg.texture_floor) if cfg.texture_floor is not None and not maximize else None
    if mask is not None:  # the wrapped update starts where the masked point is x_init (or as near as it may)
        x_init = geometry.project(x_orig + (x_init - x_orig) / mask, x_orig, delta)
    if objective is not None and sent_as is not None:
        raise ValueError("sent_as belongs to the objective: pass InnerObjective(..., sent_as=) instead")
    inner = objective or InnerObjective(model, threat, cfg, sent_as=sent_as)
    smooth = (not maximize and cfg.smooth_size is not None
              and any(n > m for n, m in zip(x_orig.shape[-2:], cfg.smooth_size)))
    if smooth:
        update = SmoothUpdate(x_orig, x_init, geometry, delta, cfg.lr, cfg.smooth_size, cfg.optimizer)
    elif cfg.optimizer == "rmsprop":
        update = TanhRMSprop(x_orig, x_init, delta, cfg.lr)
    else:
        update = ProjectedStep(x_orig, x_init, geometry, delta, cfg.lr, ascend=maximize)
    if mask is not None:
        update = MaskedUpdate(update, x_orig, mask)
    b = x_orig.shape[0]
    stopper = EarlyStopping(cfg, b, x_orig.device, enabled=not maximize)
    passes = torch.zeros(b, dtype=torch.long, device=x_orig.device)
    last_loss = torch.zeros(b, device=x_orig.device)
    history = []

    def confirm(rows: torch.Tensor) -> torch.Tensor:
        """The objective of an attack from a fresh random start on the current points of ``rows``."""
        passes[rows] += inner.passes
        with torch.enable_grad():
            return inner(update.current()[rows], y[rows])[0].detach()

    for it in range(cfg.iterations):
        rows = stopper.running()
        if rows.numel() == 0:
            break
        with torch.enable_grad():
            x_var = update.variable()
            loss, ce = inner(x_var if rows.numel() == b else x_var[rows], y[rows])
            update.step(loss, x_var, rows)
        passes[rows] += inner.passes
        last_loss[rows] = ce
        history.append(float(ce.mean()))
        stopper.observe(it, rows, loss.detach(), ce, confirm)
        if progress is not None:
            progress(it + 1, cfg.iterations, history[-1])

    if progress is not None and history and it + 1 < cfg.iterations:
        progress(cfg.iterations, cfg.iterations, history[-1])  # every image stopped early
    x_rob = update.current()
    # robust_loss was measured before each image's last outer update (one more attack would cost
    # T + 1 passes); for an image that stopped early, it is the loss it stopped with.
    return RobustifyResult(x_rob=x_rob, label=y, robust_loss=last_loss, linf=flat_norm(x_rob - x_orig, "linf"),
                           l2=flat_norm(x_rob - x_orig, "l2"), passes=float(passes.float().mean()), history=history,
                           passes_per_image=passes, stopped_at=stopper.stopped_at)
