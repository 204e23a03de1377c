"""Training: preemptively robust training (Algorithm 2, Section 3.5) and the paper's baselines.

Methods (``method`` argument of :func:`train`):

* ``"preemptive"``: Algorithm 2. ``x_rob``: L steps of PGD *down* the loss inside ``B_delta(x_orig)``
  from a random start (step ``beta``, default delta); ``x_adv``: K steps of PGD *up* the loss inside
  ``B_eps(x_rob)`` from a random start (step ``alpha``, default eps/4); theta descends
  ``l(x_adv, y)``. ``original_fraction`` > 0 trains that share of each batch (drawn at random) as
  adversarial training does, ``x_adv`` inside ``B_eps(x_orig)``: the originals stay robust (white-box
  accuracy, Algorithms 3-4) while the rest of the batch trains for the robustifier's points.
* ``"adversarial"``: PGD adversarial training (Madry et al. 2017), K steps of alpha inside
  ``B_eps(x_orig)``, with early stopping on held-out robust accuracy (Rice et al. 2020).
* ``"gaussian"``: Gaussian-noise augmentation ``x + N(0, sigma^2)`` (Cohen et al. 2019) for smoothing.
* ``"standard"``: clean training.

Every method keeps the epoch with the best held-out metric when a validation set is given:
robust accuracy under PGD-10 for the adversarial methods (the metric of early stopping), accuracy
under noise for ``gaussian``, clean accuracy for ``standard``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .attacks import pgd
from .data import FASHION_MNIST_CLASSES, fashion_mnist, held_out_size
from .models import build_model, save_checkpoint
from .threat import ThreatModel

METHODS = ("preemptive", "adversarial", "gaussian", "standard")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    method: str = "adversarial"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    lr_schedule: str = "constant"  # "constant" or "cosine" (annealed per batch to 0 over all epochs)
    attack_steps: int = 10  # K
    attack_step: Optional[float] = None  # alpha; None -> eps / 4
    descent_steps: int = 1  # L (preemptive)
    descent_step: Optional[float] = None  # beta; None -> delta (preemptive)
    original_fraction: float = 0.0  # share of each batch attacked at x_orig instead of x_rob (preemptive)
    sigma: float = 0.25  # gaussian
    seed: int = 0
    val_attack_steps: int = 10

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0.0 <= self.original_fraction < 1.0:
            raise ValueError(f"original_fraction must be in [0, 1), got {self.original_fraction!r}")


def preemptive_point(model, x, y, threat: ThreatModel, steps: int, step_size: float) -> torch.Tensor:
    """``x_rob`` of Algorithm 2: L steps of PGD towards *lower* loss inside ``B_delta(x)`` from a random start."""
    geometry = threat.geometry
    x_r = geometry.random_in_ball(x, threat.delta)
    for _ in range(steps):
        x_r = x_r.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(x_r), y, reduction="sum"), x_r)
        x_r = geometry.project(geometry.step(x_r.detach(), -g, step_size), x, threat.delta)
    return x_r.detach()


def training_examples(model, x, y, threat: Optional[ThreatModel], cfg: TrainConfig) -> torch.Tensor:
    """The inputs theta is trained on for ``cfg.method`` (Algorithm 2 for ``preemptive``)."""
    if cfg.method == "standard":
        return x
    if cfg.method == "gaussian":
        return x + cfg.sigma * torch.randn_like(x)
    alpha = cfg.attack_step if cfg.attack_step is not None else threat.epsilon / 4
    center = x
    if cfg.method == "preemptive":
        beta = cfg.descent_step if cfg.descent_step is not None else threat.delta
        if cfg.original_fraction == 0.0:  # no draw: the published algorithm's random stream is unchanged
            center = preemptive_point(model, x, y, threat, cfg.descent_steps, beta)
        else:
            rob = torch.rand(len(x), device=x.device) >= cfg.original_fraction  # the rest stay at x_orig
            center = x.clone()
            if rob.any():
                center[rob] = preemptive_point(model, x[rob], y[rob], threat, cfg.descent_steps, beta)
    return pgd(model, center, y, threat.geometry, threat.epsilon, steps=cfg.attack_steps, step_size=alpha,
               predict=lambda z: torch.full_like(y, -1))  # never "fooled": run every step


def validation_metric(model, x, y, threat: Optional[ThreatModel], cfg: TrainConfig, batch_size: int = 500) -> dict:
    """Held-out clean accuracy and the method's selection metric (see module docstring)."""
    model.eval()
    clean = robust = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        if cfg.method in ("adversarial", "preemptive"):
            center = xb
            if cfg.method == "preemptive":
                beta = cfg.descent_step if cfg.descent_step is not None else threat.delta
                center = preemptive_point(model, xb, yb, threat, cfg.descent_steps, beta)
            xa = pgd(model, center, yb, threat.geometry, threat.epsilon, steps=cfg.val_attack_steps)
        elif cfg.method == "gaussian":
            xa = xb + cfg.sigma * torch.randn_like(xb)
        else:
            xa = xb
        with torch.no_grad():
            robust += int((model(xa).argmax(1) == yb).sum())
    return {"clean_accuracy": clean / len(x), "selection_metric": robust / len(x)}


def train(
    model: torch.nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: TrainConfig,
    threat: Optional[ThreatModel] = None,
    x_val: Optional[torch.Tensor] = None,
    y_val: Optional[torch.Tensor] = None,
    progress: Optional[Callable[[int, int, dict], None]] = None,
) -> tuple:
    """Train ``model`` in place; returns ``(model, history)`` with the best epoch's weights loaded.

    ``history`` is a list of per-epoch dicts (loss, train accuracy on the training examples,
    validation figures, seconds). ``progress(step, total_steps, info)`` is called after each batch.
    """
    if cfg.method in ("adversarial", "preemptive") and threat is None:
        raise ValueError(f"method {cfg.method!r} needs a threat model")
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(x_train)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = None
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    history, best, best_state, step = [], -1.0, None, 0
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = correct = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            model.eval()  # examples are crafted against the current weights without touching BN statistics
            xe = training_examples(model, xb, yb, threat, cfg)
            model.train()
            logits = model(xe)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(1) == yb).sum())
            step += 1
            if progress is not None:
                progress(step, total, {"epoch": epoch + 1, "loss": float(loss.detach())})
        record = {"epoch": epoch + 1, "loss": loss_sum / n, "train_accuracy": correct / n,
                  "lr": opt.param_groups[0]["lr"]}  # at the end of the epoch
        if x_val is not None:
            record.update(validation_metric(model, x_val, y_val, threat, cfg))
            if record["selection_metric"] > best:
                best, best_state = record["selection_metric"], copy.deepcopy(model.state_dict())
                record["best"] = True
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def model_card(arch: str, dataset: str, cfg: TrainConfig, threat: Optional[ThreatModel], history: list,
               wall_seconds: float, command: str, **extra) -> dict:
    """The model card saved beside a checkpoint."""
    best = max((h for h in history if "selection_metric" in h), key=lambda h: h["selection_metric"], default=history[-1])
    return {
        "arch": arch, "dataset": dataset, "num_classes": extra.pop("num_classes", 10),
        "method": cfg.method, "training": asdict(cfg),
        "threat": None if threat is None else {"norm": threat.norm, "epsilon": threat.epsilon, "delta": threat.delta},
        "epochs_run": len(history), "best_epoch": best["epoch"], "seed": cfg.seed,
        "wall_seconds": round(wall_seconds, 1), "command": command, "history": history, **extra,
    }


def train_fashion_mnist(output: Path, *, method: str = "adversarial", arch: str = "small-cnn", norm: str = "linf",
                        epsilon: float = 0.1, delta: Optional[float] = None, epochs: int = 10, batch_size: int = 128,
                        lr: float = 1e-3, lr_schedule: str = "constant", attack_steps: int = 10,
                        attack_step: Optional[float] = None, descent_steps: int = 1,
                        descent_step: Optional[float] = None, original_fraction: float = 0.0, sigma: float = 0.25,
                        limit: Optional[int] = None, val_size: int = 5000, test_size: int = 10000, seed: int = 0,
                        device: str = "cpu", command: Optional[str] = None,
                        progress: Optional[Callable[[int, int, dict], None]] = None) -> dict:
    """Train ``arch`` on Fashion-MNIST with ``method`` (Algorithm 2 or a baseline) and save the checkpoint
    at ``output`` with its model card beside it; returns the card.

    The keyword arguments are ``preempt train``'s options; ``command`` is recorded in the card (default:
    the ``preempt train`` command of these options). The first ``val_size`` training images (at most a
    fifth, :func:`data.held_out_size`) are held out for early stopping; the test accuracy is measured on
    the first ``test_size`` test images. Options out of range raise ``ValueError`` before any work.
    """
    options = {k: v for k, v in locals().items() if k not in ("output", "command", "progress")}
    threat = ThreatModel(norm, epsilon, delta) if method in ("adversarial", "preemptive") else None
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                      attack_steps=attack_steps, attack_step=attack_step, descent_steps=descent_steps,
                      descent_step=descent_step, original_fraction=original_fraction, sigma=sigma, seed=seed)
    torch.manual_seed(seed)
    x, y = fashion_mnist("train", limit=limit)
    n_val = held_out_size(len(x), val_size)
    x_tr, y_tr, x_val, y_val = (t.to(device) for t in (x[n_val:], y[n_val:], x[:n_val], y[:n_val]))
    model = build_model(arch, 10, dataset="fashion-mnist").to(device)
    t0 = time.perf_counter()
    model, history = train(model, x_tr, y_tr, cfg, threat, x_val, y_val, progress=progress)
    wall = time.perf_counter() - t0
    x_te, y_te = fashion_mnist("test", limit=test_size)
    with torch.no_grad():
        pred = torch.cat([model(x_te[i:i + 1000].to(device)).argmax(1).cpu() for i in range(0, len(x_te), 1000)])
    card = model_card(arch, "fashion-mnist", cfg, threat, history, wall,
                      command or f"preempt train {render_options(options)} -o {output}",
                      test_clean_accuracy=float((pred == y_te).float().mean()), test_images=len(x_te),
                      train_images=len(x_tr), input_size=[28, 28], channels=1, class_names=FASHION_MNIST_CLASSES,
                      device=device)
    save_checkpoint(model.cpu(), Path(output), card)  # loads anywhere
    return card


def render_options(options: dict) -> str:
    """``{"lr_schedule": "cosine", "epochs": 8}`` -> ``--lr-schedule cosine --epochs 8`` (``None`` left out)."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if v is not None)
