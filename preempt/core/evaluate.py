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
from typing import Callable, Dict, Optional, Sequence

import torch

from .attacks import pgd
from .autoattack import STANDARD, AutoAttack
from .images import budget_used, quantize_within_budget
from .reconstruct import reconstruct, whitebox_attack
from .robustify import RobustifyConfig, robustify
from .threat import ThreatModel

COLUMNS = ("clean", "greybox_pgd", "greybox_aa", "whitebox_pgd", "whitebox_aa")  # of the paper's Tables 1-2


@dataclass
class EvalConfig:
    attacks: tuple = ("pgd", "aa")
    whitebox: bool = False
    whitebox_attacks: Optional[tuple] = None  # attacks run white-box (None: all of ``attacks``)
    batch_size: int = 200
    robustify: RobustifyConfig = field(default_factory=RobustifyConfig)
    num_classes: int = 10
    quantize: bool = False  # evaluate the 8-bit image a user transmits (rounded inside delta), not the float one
    # The platform's transforms (transforms.Transform), each evaluated as extra columns (transform_robustness);
    # ``survive``: the transform the robustifier optimises through (robustify(transform=...)).
    transforms: tuple = ()
    survive: Optional[object] = None


def attack_fn(name: str, model: torch.nn.Module, threat: ThreatModel, num_classes: int = 10,
              aa_components: Optional[Sequence[str]] = None) -> Callable:
    """``attack(x, y, eps) -> x_adv`` for ``name`` in ``{"pgd", "aa"}``; ``aa_components``: a subset of
    AutoAttack's (default all four, the standard version)."""
    geometry = threat.geometry
    if name == "pgd":
        return lambda x, y, eps: pgd(model, x, y, geometry, eps, steps=20, step_size=5 * eps / 20)
    if name == "aa":
        parts = tuple(aa_components or STANDARD)
        return lambda x, y, eps: AutoAttack(model, threat.norm, eps, num_classes, components=parts).run(x, y)
    raise ValueError(f"unknown attack {name!r}; choose from pgd, aa")


def transform_robustness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                         transform, attacks: Sequence[str], plain_adv: Dict[str, torch.Tensor],
                         num_classes: int = 10, adaptive_aa: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Per image, whether the platform's transform ``T`` still yields ``y`` after an attack (the threat model of
    docs/transforms.md: the man in the middle changes the file by at most epsilon, then the platform applies
    ``T`` with its real codec and classifies).

    For each attack name in ``attacks`` two attackers: the **adaptive** one attacks ``model(T(x))`` itself
    (gradients through the differentiable stand-in, the real codec in every forward pass, so its successes are
    real), once at each fixed point of ``T`` (:meth:`~transforms.Transform.points`: the ends and the middle of
    each range, as a platform picks one setting); the **non-adaptive** one is ``plain_adv[name]``, the same
    attack on the untransformed model, then transformed. Returns ``"clean"`` (classified ``y`` after ``T`` at
    every point) and, per attack, ``A_adaptive``, ``A_nonadaptive`` and ``A``: robust against both (an
    attacker who tries both; the weaker of the two for the defender). ``adaptive_aa``: the AutoAttack components
    the adaptive attacker runs through ``T`` (default all four; ``("apgd-ce", "apgd-t")`` where Square's 5000
    queries, each a codec call per image, cost too much). An identity ``T`` (``none``) costs no attack: both
    attackers are the plain one.
    """
    from .transforms import Transformed

    if transform.identity:
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            out = {"clean": clean}
            for name in attacks:
                out[name] = out[f"{name}_adaptive"] = out[f"{name}_nonadaptive"] = (
                    clean & (model(plain_adv[name]).argmax(1) == y))
        return out
    out = {"clean": torch.ones(len(x), dtype=torch.bool, device=x.device)}
    for name in attacks:
        out[f"{name}_adaptive"] = torch.ones_like(out["clean"])
        out[f"{name}_nonadaptive"] = torch.ones_like(out["clean"])
    for point in transform.points():
        judged = Transformed(model, point)
        with torch.no_grad():
            out["clean"] &= judged(x).argmax(1) == y
            for name in attacks:
                out[f"{name}_nonadaptive"] &= judged(plain_adv[name]).argmax(1) == y
        for name in attacks:
            x_adv = attack_fn(name, judged, threat, num_classes, adaptive_aa)(x, y, threat.epsilon)
            with torch.no_grad():
                out[f"{name}_adaptive"] &= judged(x_adv).argmax(1) == y
    for name in attacks:
        out[f"{name}_adaptive"] &= out["clean"]
        out[f"{name}_nonadaptive"] &= out["clean"]
        out[name] = out[f"{name}_adaptive"] & out[f"{name}_nonadaptive"]
    return out


def robust_masks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Dict[str, Callable],
                 epsilon: float, batch_size: int, predict: Optional[Callable] = None) -> tuple:
    """``(correct, {name: survives})``: per image, whether it is classified ``y``, and for each attack
    whether it is classified ``y`` and the attack (``attack(x, y, eps)``) does not change that. Batched."""
    predict = predict or (lambda z: model(z).argmax(1))
    correct, survives = [], {name: [] for name in attacks}
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            ok = predict(xb) == yb
        correct.append(ok)
        for name, attack in attacks.items():
            x_adv = attack(xb, yb, epsilon)
            with torch.no_grad():
                survives[name].append(ok & (predict(x_adv) == yb))
    return torch.cat(correct), {name: torch.cat(m) for name, m in survives.items()}


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             cfg: Optional[EvalConfig] = None, model_name: str = "model", device: str = "cpu",
             progress: Optional[Callable[[int], None]] = None, predict: Optional[Callable] = None,
             attacks: Optional[Dict[str, Callable]] = None,
             extra: Optional[Callable[[torch.Tensor, torch.Tensor], dict]] = None) -> list:
    """Rows ``[{"model", "preempt": "none"}, {"model", "preempt": "ours"}]`` with a fraction per column.

    Columns: ``clean``, ``greybox_A`` for each attack ``A``, and ``whitebox_A`` (the originals' is their
    grey-box one; the robustified images' is Algorithm 4's with the eps' sweep when ``cfg.whitebox``).
    ``predict`` (default: the argmax of ``model``) labels images, e.g. a smoothed classifier's
    prediction; ``attacks`` (name -> ``attack(x, y, eps)``, default those of ``cfg.attacks``) are the
    attacks; ``extra(x, y)`` -> ``{column: count}`` adds columns (e.g. certified accuracy).

    Also returns, in each row, ``"passes"`` (robustification cost per image) and for the ``ours`` row
    ``"linf"``/``"l2"`` (largest budget used), ``"psnr"`` (mean over the images that changed) and ``"ssim"``
    (mean) of the robustified images against the originals, ``"seconds_per_image"`` (wall time of robustification
    alone) and, with the white-box attack, ``"whitebox_A_by_eps"``: the accuracy at each eps' of the
    sweep (the column itself is the lowest).
    """
    cfg = cfg or EvalConfig()
    predict = predict or (lambda z: model(z).argmax(1))
    attacks = attacks or {name: attack_fn(name, model, threat, cfg.num_classes) for name in cfg.attacks}
    whitebox = [a for a in attacks if cfg.whitebox and a in (cfg.whitebox_attacks or attacks)]
    rcfg = cfg.robustify
    counts = {p: {} for p in ("none", "ours")}
    by_eps: dict = {}  # (attack, eps') -> white-box robust count
    budget = {"linf": 0.0, "l2": 0.0}
    quality = {"psnr": 0.0, "ssim": 0.0, "changed": 0}
    passes_sum, robustify_seconds = 0.0, 0.0

    def add(preempt: str, column: str, mask) -> None:
        counts[preempt][column] = counts[preempt].get(column, 0) + int(mask.sum())

    for i in range(0, len(x), cfg.batch_size):
        xo, yb = x[i:i + cfg.batch_size].to(device), y[i:i + cfg.batch_size].to(device)
        start = time.perf_counter()
        res = robustify(model, xo, threat, rcfg, y=predict(xo), transform=cfg.survive)
        robustify_seconds += time.perf_counter() - start
        xr = quantize_within_budget(res.x_rob, xo, threat.norm, threat.delta) if cfg.quantize else res.x_rob
        passes_sum += res.passes * len(xo)
        budget["linf"] = max(budget["linf"], float(res.linf.max()))
        budget["l2"] = max(budget["l2"], float(res.l2.max()))
        for k in range(len(xo)):  # what the written images cost in visibility
            used = budget_used(xr[k].cpu(), xo[k].cpu())
            quality["ssim"] += used["ssim"]
            if used["psnr"] is not None:
                quality["psnr"] += used["psnr"]
                quality["changed"] += 1
        x_hat = None  # Algorithm 3's reconstruction: one per batch, shared by every white-box attack
        for preempt, xb in (("none", xo), ("ours", xr)):
            with torch.no_grad():
                acc = predict(xb) == yb
            add(preempt, "clean", acc)
            plain_adv = {}
            for name, attack in attacks.items():
                x_adv = plain_adv[name] = attack(xb, yb, threat.epsilon)
                with torch.no_grad():
                    grey = acc & (predict(x_adv) == yb)
                add(preempt, f"greybox_{name}", grey)
                if preempt == "none":
                    add(preempt, f"whitebox_{name}", grey)
                elif name in whitebox:
                    if x_hat is None:
                        x_hat = reconstruct(model, xr, threat, iterations=rcfg.iterations, steps=rcfg.steps,
                                            sigma=rcfg.sigma, noise_samples=rcfg.noise_samples)
                    wb = whitebox_attack(model, xr, xo, yb, threat, attack=attack, predict=predict, x_hat=x_hat,
                                         count=acc)
                    add(preempt, f"whitebox_{name}", acc & wb["robust_worst"])
                    for eps, ok in wb["robust"].items():
                        by_eps[name, eps] = by_eps.get((name, eps), 0) + int((acc & ok).sum())
            for t in cfg.transforms:
                masks = transform_robustness(model, xb, yb, threat, t, list(attacks), plain_adv, cfg.num_classes)
                for key, mask in masks.items():
                    add(preempt, f"{t.spec}:" + (key if key == "clean" else f"greybox_{key}"), mask)
            for column, k in (extra(xb, yb) if extra else {}).items():
                counts[preempt][column] = counts[preempt].get(column, 0) + k
        if progress is not None:
            progress(len(xo))
    n = len(x)
    rows = []
    for preempt in ("none", "ours"):
        row = {"model": model_name, "preempt": preempt, **{c: k / n for c, k in counts[preempt].items()}}
        row["passes"] = 0 if preempt == "none" else passes_sum / n
        if preempt == "ours":
            row.update(budget)
            row["ssim"] = quality["ssim"] / n
            row["psnr"] = quality["psnr"] / quality["changed"] if quality["changed"] else None  # over changed images
            row["seconds_per_image"] = robustify_seconds / n
            for name in whitebox:
                row[f"whitebox_{name}_by_eps"] = {f"{eps:g}": k / n for (a, eps), k in sorted(by_eps.items())
                                                  if a == name}
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
        if r["preempt"] == "ours" and "ssim" in r:
            psnr = "-" if r.get("psnr") is None else f"{r['psnr']:.1f} dB"
            notes.append(f"visibility ({r['model']}): PSNR {psnr} (images that changed), SSIM {r['ssim']:.3f}")
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + format_transforms(rows)


def format_transforms(rows: list) -> str:
    """The transform columns of ``rows`` (``SPEC:clean``, ``SPEC:greybox_A``) as a second table: accuracy after
    the platform's transform, and gap closure against the originals under the same transform."""
    specs = list(dict.fromkeys(c.split(":greybox_")[0] for r in rows for c in r if ":greybox_" in c and
                               not c.endswith(("_adaptive", "_nonadaptive"))))
    if not specs:
        return ""
    attacks = list(dict.fromkeys(c.split(":greybox_")[1] for c in rows[0] if ":greybox_" in c and
                                 not c.endswith(("_adaptive", "_nonadaptive"))))
    lines = ["", "", "After the platform's transform (the attack: adaptive or not, whichever breaks the image):", "",
             "| Model | Preempt. | transform | clean | " + " | ".join(f"greybox_{a} | gap closure {a}" for a in attacks)
             + " |", "|---|---|---|---|" + "---|---|" * len(attacks)]
    none = next((r for r in rows if r["preempt"] == "none"), None)
    for r in rows:
        for spec in specs:
            cells = [f"{100 * r[f'{spec}:clean']:.2f}"]
            for a in attacks:
                col = f"{spec}:greybox_{a}"
                g = gap_closure({"clean": none[f"{spec}:clean"], col: none[col]}, {col: r[col]}, col) if (
                    none is not None and r is not none) else None
                cells += [f"{100 * r[col]:.2f}", "-" if g is None else f"{g:.2f}"]
            lines.append(f"| {r['model']} | {r['preempt']} | {spec} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
