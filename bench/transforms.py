"""Protection after what platforms do to images: JPEG re-encoding and resizing (docs/transforms.md).

    python -m bench.transforms [-n 1000] [--model fmnist-linf-ours-12ep] [--upscale 1]
        [--columns none,jpeg:75,jpeg:85,jpeg:95] [--survive jpeg:75-95] [--attacks pgd,aa]
        [--batch 100] [--json F] [--markdown F]

The first ``n`` Fashion-MNIST test images (enlarged ``--upscale`` times by Pillow first, as a platform sees a
photo larger than its model's input) go through the product's pipeline (``protect_images`` at the defaults:
robustify, 8-bit PNG, the check on the written file, strength medium) twice from the same seed: as they are
(``defaults``) and with ``survive=SPEC`` (``survive SPEC``). The originals and both outputs are then attacked
for each column's transform ``T`` (the threat model of docs/transforms.md: the attack changes the file by at
most epsilon, then the platform applies ``T`` with the real codec and classifies): grey-box PGD-20 and
AutoAttack (standard), each adaptive (through ``T``, at the ends and middle of a range) and not (then
transformed); an image counts as robust only if both fail (:func:`preempt.core.evaluate.transform_robustness`).
``--adaptive-aa apgd-ce,apgd-t`` limits the adaptive AutoAttack to its gradient attacks (Square's 5000 queries
through a codec are the slow part on a CPU); the non-adaptive one is always the standard four.

Per row and column: clean accuracy after ``T``, robust accuracy and gap closure per attack (against the
originals under the same ``T``); per row: robustification passes per image, seconds per image of the whole
pipeline (robustify, write, check), PSNR, SSIM and the verified rate of the written files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from preempt.core.data import fashion_mnist
from preempt.core.evaluate import attack_fn, transform_robustness
from preempt.core.images import DecodedImage
from preempt.core.models import load_classifier
from preempt.core.protect import protect_images
from preempt.core.robustify import RobustifyConfig
from preempt.core.transforms import Transform, enlarge
from preempt.registry import DEFAULT_MODEL

from . import card_threat


def attack_columns(model, x, y, threat, columns, attacks, adaptive_aa=None) -> dict:
    """``{column: {key: bool[B]}}`` of :func:`transform_robustness` for each column."""
    plain = {name: attack_fn(name, model, threat)(x, y, threat.epsilon) for name in attacks}
    transforms = [Transform(spec) for spec in columns]
    return {t.spec: transform_robustness(model, x, y, threat, t, attacks, plain, adaptive_aa=adaptive_aa)
            for t in transforms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first test image")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--upscale", type=int, default=1, help="enlarge the test images by this factor first")
    ap.add_argument("--columns", default="none,jpeg:75,jpeg:85,jpeg:95", help="comma list of transform specs")
    ap.add_argument("--survive", default="jpeg:75-95", help="the survive spec of the second variant")
    ap.add_argument("--attacks", default="pgd,aa")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--adaptive-aa", default="all",
                    help="AutoAttack components run through the transform: all (the standard four) or a comma list, "
                         "e.g. apgd-ce,apgd-t (the non-adaptive AutoAttack is always the standard four)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    clf = load_classifier(args.model)
    threat = card_threat(args.model)
    x, y = fashion_mnist("test", limit=args.start + args.n)
    x, y = enlarge(x[args.start:], args.upscale), y[args.start:]
    columns = [Transform(c).spec for c in args.columns.split(",")]
    attacks = args.attacks.split(",")
    adaptive_aa = None if args.adaptive_aa == "all" else tuple(args.adaptive_aa.split(","))
    size = clf.spec.input_size
    config = RobustifyConfig(smooth_size=tuple(size) if size else None)
    variants = {"defaults": None, f"survive {Transform(args.survive).spec}": Transform(args.survive)}
    masks = {v: {} for v in ["originals", *variants]}
    reports = {v: [] for v in variants}
    seconds = {v: 0.0 for v in variants}

    def keep(variant, found):
        for col, m in found.items():
            for key, mask in m.items():
                masks[variant].setdefault(col, {}).setdefault(key, []).append(mask)

    t0 = time.perf_counter()
    for i in range(0, len(x), args.batch):
        xb, yb = x[i:i + args.batch], y[i:i + args.batch]
        torch.manual_seed(args.seed + i)
        keep("originals", attack_columns(clf.model, xb, yb, threat, columns, attacks, adaptive_aa))
        for variant, survive in variants.items():
            torch.manual_seed(args.seed + i)
            start = time.perf_counter()
            out = protect_images(clf.model, [DecodedImage(pixels=xi, alpha=None, format="png") for xi in xb], threat,
                                 config, strength="medium", survive=survive)
            seconds[variant] += time.perf_counter() - start
            reports[variant] += [r.report for r in out]
            xr = torch.stack([r.pixels for r in out])
            torch.manual_seed(args.seed + i)
            keep(variant, attack_columns(clf.model, xr, yb, threat, columns, attacks, adaptive_aa))
        done = i + len(xb)
        result = summarise(masks, reports, seconds, attacks, columns)
        result.update({"command": "python -m bench.transforms " + " ".join(sys.argv[1:] if argv is None else argv),
                       "model": args.model, "adaptive_aa": list(adaptive_aa or ["all"]), "n": done,
                       "complete": done == len(x), "start": args.start, "upscale": args.upscale,
                       "image_size": list(x.shape[-2:]), "threat": asdict(threat), "columns": columns,
                       "attacks": attacks,
                       "seconds": time.perf_counter() - t0})
        md = markdown(result)
        print(f"{done}/{len(x)} images, {time.perf_counter() - t0:.0f} s", flush=True)
        if args.json:  # after every batch, so that an interrupted run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(md + "\n")
    print(md)
    return 0


def summarise(masks: dict, reports: dict, seconds: dict, attacks: list, columns: list) -> dict:
    """``{"rows": [...]}``: per variant, each column's accuracies (and gap closure against the originals), and
    for the protected variants the pipeline's cost and visibility."""
    rows = []
    for variant, found in masks.items():
        row = {"variant": variant}
        for col, m in found.items():
            cat = {k: torch.cat(v) for k, v in m.items()}
            row[f"{col}:clean"] = float(cat["clean"].float().mean())
            for a in attacks:
                for suffix in ("", "_adaptive", "_nonadaptive"):
                    row[f"{col}:{a}{suffix}"] = float(cat[a + suffix].float().mean())
        if variant in reports:
            rs = reports[variant]
            psnr = [r["psnr"] for r in rs if r["psnr"] is not None]
            row.update({
                "passes_per_image": statistics.mean(r["passes"] for r in rs),
                "seconds_per_image": seconds[variant] / len(rs),
                "psnr_changed": statistics.mean(psnr) if psnr else None,
                "ssim": statistics.mean(r["ssim"] for r in rs),
                "verified": sum(bool(r.get("verified", {}).get("robust")) for r in rs) / len(rs),
            })
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        for col in columns:
            for a in attacks:
                gap = base[f"{col}:clean"] - base[f"{col}:{a}"]
                row[f"{col}:gap_closure_{a}"] = (row[f"{col}:{a}"] - base[f"{col}:{a}"]) / gap if gap > 0 else None
    return {"rows": rows}


def markdown(result: dict) -> str:
    """One row per variant: gap closure per column and attack, then cost and visibility."""
    cols, attacks = result["columns"], result["attacks"]
    head = ["variant"] + [f"{c} {a}" for c in cols for a in attacks] + ["passes/img", "s/img", "PSNR dB", "SSIM",
                                                                       "verified"]
    lines = [f"{result['n']} test images from {result['start']}, {result['image_size'][0]}x{result['image_size'][1]} px, "
             f"model {result['model']}; cells: gap closure (robust accuracy after the transform)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = (lambda v, d=3: "-" if v is None else f"{v:.{d}f}")
    for r in result["rows"]:
        cells = [r["variant"]]
        for c in cols:
            for a in attacks:
                g = r.get(f"{c}:gap_closure_{a}")
                cells.append(f"{fmt(g, 2)} ({r[f'{c}:{a}']:.3f})" if "passes_per_image" in r else f"- ({r[f'{c}:{a}']:.3f})")
        cells += [fmt(r.get("passes_per_image"), 0), fmt(r.get("seconds_per_image"), 2), fmt(r.get("psnr_changed"), 1),
                  fmt(r.get("ssim")), fmt(r.get("verified"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
