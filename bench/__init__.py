"""Benchmarks: ``python -m bench.robustify``, ``bench.passes``, ``bench.service``, ``bench.protection``,
``bench.defaults`` (the pipeline at its defaults against the paper's loop), ``bench.check`` (what the check needs),
``bench.initializer`` (an amortised start)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, cols: list, json_path=None, markdown_path=None) -> str:
    """Print ``result["rows"]`` as a markdown table of ``cols``; write the JSON and the markdown when asked."""
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in result["rows"]:
        md += "| " + " | ".join("-" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                                for c in cols) + " |\n"
    print(md)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(md)
    return md


def card_threat(model: str, **given):
    """The :class:`~preempt.core.threat.ThreatModel` a request for ``model`` gets by default (its card's norm,
    epsilon and delta, else the product's), ``given`` (e.g. ``delta=0.05``) changing a field as a client would."""
    from preempt.core.threat import ThreatModel
    from preempt.registry import card_for
    from preempt.request import RobustifyRequest

    return ThreatModel(**RobustifyRequest.resolve(card_for(model), model, **given).threat_fields())


def robust_accuracy(model, x, y, threat, attacks, batch: int, whitebox_of=None, robust_loss=None,
                    masks=None) -> dict:
    """Clean and grey-box accuracy of ``x`` (an image counts when correct and the attack fails), batched.

    ``whitebox_of`` (the originals): also the white-box PGD of Algorithms 3-4. ``robust_loss`` (the
    robustifier's final loss per image): also how many correctly classified images each attack breaks
    with that loss above ln 2 (the robustifier knew it had found no robust point) and below (its own
    check was fooled). ``masks`` (a dict): filled with each attack's per-image "correct and survives" mask.
    """
    import math

    from preempt.core.evaluate import attack_fn, robust_masks
    from preempt.core.reconstruct import whitebox_attack

    ok, survives = robust_masks(model, x, y, {name: attack_fn(name, model, threat) for name in attacks},
                                threat.epsilon, batch)
    out = {"clean": float(ok.float().mean())}
    for name, kept in survives.items():
        out[f"greybox_{name}"] = float(kept.float().mean())
        if masks is not None:
            masks[name] = kept
        if robust_loss is not None:
            broken = ok & ~kept
            out[f"broken_{name}_loss_above_ln2"] = int((broken & (robust_loss >= math.log(2))).sum())
            out[f"broken_{name}_loss_below_ln2"] = int((broken & (robust_loss < math.log(2))).sum())
    if whitebox_of is not None:
        wb = whitebox_attack(model, x, whitebox_of, y, threat)
        out["whitebox_pgd"] = float((ok & wb["robust_worst"]).float().mean())
    return out


def kept_row(ap, keep: str, against: str) -> tuple:
    """``(made, evaluation)`` of the ``defaults`` row a ``bench.defaults --keep`` folder holds: its files
    (``defaults.pt``) and its evaluation (``defaults.eval.json``), which must hold per-file verdicts of ``against``
    (else ``ap.error``, one line)."""
    import torch

    folder = Path(keep)
    if not (folder / "defaults.pt").exists() or not (folder / "defaults.eval.json").exists():
        ap.error(f"{folder} holds no evaluated defaults row: run bench.defaults with --keep {folder} first")
    made = torch.load(folder / "defaults.pt", weights_only=False)
    evaluation = json.loads((folder / "defaults.eval.json").read_text())
    if against not in evaluation.get("robust_per_file", {}):
        ap.error(f"{folder}/defaults.eval.json holds no per-file verdicts of {against!r}: run bench.defaults with "
                 "--keep and that attack first")
    return made, evaluation
