"""Evaluation of preemptive robustness (Section 4): grey-box and white-box accuracy, tables.

For a labelled batch ``(x, y)``:

* ``preempt = "none"``: clean accuracy and accuracy under the attacks on the originals (the
  grey-box and the white-box adversary coincide when nothing was modified, footnote 2);
* ``preempt = "ours"``: ``x_rob = robustify(x_orig)`` with labels ``c(x_orig)``; clean accuracy of
  ``x_rob``; grey-box accuracy: attacks on ``x_rob``; white-box accuracy: Algorithm 4 with the eps'
  sweep and the validity rule, the lowest accuracy over the sweep.

Attacks: ``"pgd"`` is PGD-20 with step ``5 * eps / 20`` and a random start; ``"aa"`` is AutoAttack,
standard version (:mod:`autoattack`). An image counts as accurate when it is correctly classified
and the attack does not change that. Tables follow the paper's Tables 1-2 layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .attacks import pgd
from .autoattack import AutoAttack
from .images import quantize_within_budget
from .reconstruct import reconstruct, whitebox_attack
from .robustify import RobustifyConfig, robustify
from .threat import ThreatModel

COLUMNS = ("clean", "greybox_pgd", "greybox_aa", "whitebox_pgd", "whitebox_aa")


@dataclass
class EvalConfig:
    attacks: tuple = ("pgd", "aa")
    whitebox: bool = False
    whitebox_attacks: Optional[tuple] = None  # attacks run white-box (None: all of ``attacks``)
    batch_size: int = 200
    robustify: RobustifyConfig = field(default_factory=RobustifyConfig)
    num_classes: int = 10
    quantize: bool = False  # evaluate the 8-bit image a user transmits (rounded inside delta), not the float one


def attack_fn(name: str, model: torch.nn.Module, threat: ThreatModel, num_classes: int = 10) -> Callable:
    """``attack(x, y, eps) -> x_adv`` for ``name`` in ``{"pgd", "aa"}``."""
    geometry = threat.geometry
    if name == "pgd":
        return lambda x, y, eps: pgd(model, x, y, geometry, eps, steps=20, step_size=5 * eps / 20)
    if name == "aa":
        return lambda x, y, eps: AutoAttack(model, threat.norm, eps, num_classes).run(x, y)
    raise ValueError(f"unknown attack {name!r}; choose from pgd, aa")


def _accurate(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             cfg: Optional[EvalConfig] = None, model_name: str = "model", device: str = "cpu",
             progress: Optional[Callable[[int], None]] = None) -> list:
    """Rows ``[{"model", "preempt": "none"}, {"model", "preempt": "ours"}]`` with a fraction per column.

    Also returns, in each row, ``"passes"`` (robustification cost per image) and for the
    ``ours`` row ``"linf"``/``"l2"`` (largest budget used), ``"seconds_per_image"`` (wall time of
    robustification alone) and, with the white-box attack, ``"whitebox_ATTACK_by_eps"``: the accuracy
    at each eps' of the sweep (the column itself is the lowest). Columns of attacks not run are absent.
    """
    cfg = cfg or EvalConfig()
    counts = {p: {c: 0 for c in COLUMNS} for p in ("none", "ours")}
    by_eps: dict = {}  # (attack, eps') -> white-box robust count
    budget = {"linf": 0.0, "l2": 0.0}
    passes_sum, robustify_seconds = 0.0, 0.0
    for i in range(0, len(x), cfg.batch_size):
        xo, yb = x[i:i + cfg.batch_size].to(device), y[i:i + cfg.batch_size].to(device)
        start = time.perf_counter()
        res = robustify(model, xo, threat, cfg.robustify)
        robustify_seconds += time.perf_counter() - start
        xr = res.x_rob
        passes_sum += res.passes * len(xo)
        if cfg.quantize:
            xr = quantize_within_budget(xr, xo, threat.norm, threat.delta)
        budget["linf"] = max(budget["linf"], float(res.linf.max()))
        budget["l2"] = max(budget["l2"], float(res.l2.max()))
        x_hat = None  # Algorithm 3's reconstruction: one per batch, shared by every white-box attack
        for preempt, xb in (("none", xo), ("ours", xr)):
            acc = _accurate(model, xb, yb)
            counts[preempt]["clean"] += int(acc.sum())
            for name in cfg.attacks:
                grey = acc & _accurate(model, attack_fn(name, model, threat, cfg.num_classes)(xb, yb, threat.epsilon), yb)
                counts[preempt][f"greybox_{name}"] += int(grey.sum())
                if preempt == "none":
                    counts[preempt][f"whitebox_{name}"] += int(grey.sum())
                elif cfg.whitebox and name in (cfg.whitebox_attacks or cfg.attacks):
                    if x_hat is None:
                        x_hat = reconstruct(model, xr, threat, iterations=cfg.robustify.iterations,
                                            steps=cfg.robustify.steps)
                    wb = whitebox_attack(model, xr, xo, yb, threat, attack=attack_fn(name, model, threat, cfg.num_classes),
                                         x_hat=x_hat, count=acc)
                    counts[preempt][f"whitebox_{name}"] += int((acc & wb["robust_worst"]).sum())
                    for eps, ok in wb["robust"].items():
                        by_eps[name, eps] = by_eps.get((name, eps), 0) + int((acc & ok).sum())
        if progress is not None:
            progress(len(xo))
    n = len(x)
    rows = []
    for preempt in ("none", "ours"):
        row = {"model": model_name, "preempt": preempt}
        for c in COLUMNS:
            atk = c.split("_")[-1]
            wb = cfg.whitebox and atk in (cfg.whitebox_attacks or cfg.attacks)
            if c == "clean" or (atk in cfg.attacks and (c.startswith("greybox") or preempt == "none" or wb)):
                row[c] = counts[preempt][c] / n
        row["passes"] = 0 if preempt == "none" else passes_sum / n
        if preempt == "ours":
            row.update(budget)
            row["seconds_per_image"] = robustify_seconds / n
            for name in cfg.attacks:
                sweep = {f"{eps:g}": k / n for (a, eps), k in sorted(by_eps.items()) if a == name}
                if sweep:
                    row[f"whitebox_{name}_by_eps"] = sweep
        rows.append(row)
    return rows


def gap_closure(none_row: dict, ours_row: dict, column: str) -> Optional[float]:
    """(acc(ours) - acc(none)) / (clean - acc(none)): the share of attackable images made robust."""
    if column not in none_row or column not in ours_row:
        return None
    gap = none_row["clean"] - none_row[column]
    return None if gap <= 0 else (ours_row[column] - none_row[column]) / gap


def format_table(table: dict) -> str:
    """Markdown in the layout of the paper's Tables 1-2, with gap closure under each grey-box attack."""
    rows = table["rows"]
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    head = f"{table['n_images']} images, {table['norm']}, epsilon = {table['epsilon']}, delta = {table['delta']}\n\n"
    lines = ["| Model | Preempt. | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['preempt']} | " + " | ".join(
            f"{100 * r[c]:.2f}" if c in r else "-" for c in cols) + " |")
    notes = []
    none = next((r for r in rows if r["preempt"] == "none"), None)
    for r in rows:
        if r["preempt"] == "ours" and none is not None:
            for c in cols:
                if c.startswith("greybox"):
                    g = gap_closure(none, r, c)
                    if g is not None:
                        notes.append(f"gap closure ({r['model']}, {c}): {g:.2f}")
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")
