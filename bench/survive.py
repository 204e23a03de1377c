"""What wins back protection lost to JPEG re-encoding: robustification variants against AutoAttack through JPEG 75.

    python -m bench.survive [-n 50] [--start 0] [--variants originals,defaults,s75-high,full-high]
        [--model fmnist-linf-ours-12ep] [--delta D] [--jsonl F]

Test images ``start .. start + n`` of Fashion-MNIST go through the product's pipeline (``protect_images``: robustify,
8-bit PNG, the report's check, continuation, the strength's scale) under each variant of :data:`VARIANTS` (a
``survive`` spec, the robustifier's configuration, the strength), each from seed 0. Each output (and the
originals) is then attacked by AutoAttack: the standard four on the untransformed classifier (column ``none``), and
at JPEG quality 75 with the real codec, adaptive (APGD-CE and APGD-T through the codec's differentiable stand-in,
every forward pass the real codec) and non-adaptive (the standard four's examples, re-encoded); an image counts as
robust at JPEG 75 only if both fail (:func:`preempt.core.evaluate.transform_robustness`, docs/transforms.md).

One JSON line per variant: robust accuracy with no transform and after JPEG 75 (``j75_aa``: both attackers),
the robustifier's passes per image (continuation included; not the check's), how many images were continued, the
share the report verified (through the survive spec's check points), the mean scale kept, seconds per image of the
pipeline, and the per-image JPEG-75 verdicts (``j75_aa_mask``) so that runs on consecutive ranges of images can be
pooled.

``--delta D`` gives the user a budget other than the card's (as a client's ``delta`` would); the attacker's epsilon
stays the card's, so the rows say what a larger (or smaller) change buys against the same man in the middle.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from preempt.core.data import fashion_mnist
from preempt.core.images import DecodedImage
from preempt.core.models import load_classifier
from preempt.core.protect import protect_images
from preempt.core.robustify import RobustifyConfig
from preempt.core.transforms import Transform
from preempt.registry import DEFAULT_MODEL

from . import card_threat
from .transforms import attack_columns

FULL = {"stop_patience": 0, "plateau_window": 0}  # the whole loop: no early stopping
TARGETED3 = {"samples": 3, "inner_loss": "targeted", "aggregate": "max"}
LATE = {"survive_optimise": "rejected"}  # the robustifier's first try without the codec; the check through it
# name: (survive spec or None, RobustifyConfig, strength[, further protect_images keywords])
VARIANTS = {
    "defaults": (None, RobustifyConfig(), "medium"),
    "high": (None, RobustifyConfig(), "high"),
    "full-high": (None, RobustifyConfig(**FULL), "high"),
    "s75-95": ("jpeg:75-95", RobustifyConfig(), "medium"),
    "s75-95-max3": ("jpeg:75-95", RobustifyConfig(samples=3, aggregate="max"), "medium"),
    "s75": ("jpeg:75", RobustifyConfig(), "medium"),
    "s75-high": ("jpeg:75", RobustifyConfig(), "high"),
    "s75-tgt3": ("jpeg:75", RobustifyConfig(**TARGETED3), "medium"),
    "s75-full": ("jpeg:75", RobustifyConfig(**FULL), "high"),
    "s75-full-tgt3": ("jpeg:75", RobustifyConfig(**FULL, **TARGETED3), "high"),
    "s75-late": ("jpeg:75", RobustifyConfig(), "medium", LATE),
    "s75-late-high": ("jpeg:75", RobustifyConfig(), "high", LATE),
}
COLUMN = "jpeg:75"


def evaluate(model, x, y, threat) -> tuple:
    """``(accuracies, per-image JPEG-75 verdict)`` of AutoAttack without a transform and at JPEG 75."""
    torch.manual_seed(0)
    out = attack_columns(model, x, y, threat, ["none", COLUMN], ["aa"], adaptive_aa=("apgd-ce", "apgd-t"))
    none, j75 = out["none"], out[COLUMN]
    acc = {"none_aa": float(none["aa"].float().mean()), "j75_clean": float(j75["clean"].float().mean()),
           "j75_aa": float(j75["aa"].float().mean()), "j75_aa_adaptive": float(j75["aa_adaptive"].float().mean()),
           "j75_aa_nonadaptive": float(j75["aa_nonadaptive"].float().mean())}
    return acc, j75["aa"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--start", type=int, default=0, help="first test image")
    ap.add_argument("--variants", default="originals,defaults,s75-high,full-high",
                    help="comma list: originals and names of VARIANTS")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--delta", type=float, help="the user's budget (default: the model card's); epsilon stays")
    ap.add_argument("--jsonl", help="append each variant's line here too")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v != "originals" and v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {['originals', *VARIANTS]}")
    model = load_classifier(args.model).model
    threat = card_threat(args.model)  # the attacker's: the card's epsilon
    budget = card_threat(args.model, delta=args.delta)  # the user's: delta None is the card's; epsilon stays
    x, y = fashion_mnist("test", limit=args.start + args.n)[:2]
    x, y = x[args.start:], y[args.start:]
    for name in names:
        t0 = time.perf_counter()
        row = {"variant": name, "model": args.model, "start": args.start, "n": len(x),
               "epsilon": threat.epsilon, "delta": None if name == "originals" else budget.delta}
        if name == "originals":
            acc, mask = evaluate(model, x, y, threat)
        else:
            spec, cfg, strength, *extra = VARIANTS[name]
            torch.manual_seed(0)
            out = protect_images(model, [DecodedImage(pixels=xi, alpha=None, format="png") for xi in x], budget, cfg,
                                 strength=strength, survive=Transform(spec) if spec else None,
                                 **(extra[0] if extra else {}))
            sec = time.perf_counter() - t0
            xr = torch.stack([r.pixels for r in out])
            reports = [r.report for r in out]
            row.update({"protect_s_per_img": round(sec / len(x), 2),
                        "passes": sum(r["passes"] for r in reports) / len(x),
                        "verified": sum(r["verified"]["robust"] for r in reports) / len(x),
                        "scale": sum(r.get("scale", 1.0) for r in reports) / len(x),
                        "continued": sum(r.get("continued", False) for r in reports),
                        "linf_max": max(r["linf"] for r in reports)})
            acc, mask = evaluate(model, xr, y, threat)
        row.update(acc)
        row["total_s"] = round(time.perf_counter() - t0)
        row["j75_aa_mask"] = [int(v) for v in mask]
        line = json.dumps(row)
        print(line, flush=True)
        if args.jsonl:
            with Path(args.jsonl).open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
