"""Protection after what platforms do to images: JPEG re-encoding and resizing (docs/transforms.md).

    python -m bench.transforms [-n 1000] [--model fmnist-linf-ours-12ep] [--upscale 1]
        [--columns none,jpeg:75,jpeg:85,jpeg:95] [--survive jpeg:75-95] [--attacks pgd,aa]
        [--batch 100] [--delta D] [--chunks DIR [--from-chunks]] [--json F] [--markdown F]

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

``--chunks DIR`` saves each batch's per-image verdicts and reports to ``DIR/<first>-<end>.json`` (test image
indices) as soon as the batch ends, and takes a batch found there (made with the same settings) instead of running
it again: an interrupted run resumes, and runs on other machines or with other ``--start`` fill in other ranges of
the same table. The table is then built from every chunk in the folder with those settings, in order of their first
image, so a 1000-image table can be made in parts; it says which images it covers, and how many of them this run
ran (``ran``: 0 when it only built the table from the chunks; its ``seconds`` are then this run's, not the table's).
``--from-chunks`` builds the table of the folder and runs nothing.

``--delta D`` gives both variants a budget other than the card's (as a client's ``delta`` would); the attacks keep
the card's epsilon, so the table says what a larger change buys against the same man in the middle.
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
    ap.add_argument("--delta", type=float, default=None,
                    help="the user's budget for both variants (default: the model card's); the attack's epsilon stays")
    ap.add_argument("--chunks", default=None, help="folder for each batch's per-image results; batches found there "
                    "are taken, not run again, and the table covers every chunk there with these settings")
    ap.add_argument("--from-chunks", action="store_true", help="only build the table of the chunks in --chunks; "
                    "run no batch (a batch of the range missing there is named, not run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    if args.n < 1 or args.batch < 1:
        ap.error("-n and --batch must be at least 1")
    if args.from_chunks and not args.chunks:
        ap.error("--from-chunks needs --chunks DIR")
    clf = load_classifier(args.model)
    threat = card_threat(args.model)  # the attacker's: the card's epsilon
    budget = card_threat(args.model, delta=args.delta)  # the user's: delta None is the card's; epsilon stays
    x, y = fashion_mnist("test", limit=args.start + args.n)
    x, y = enlarge(x[args.start:], args.upscale), y[args.start:]
    columns = [Transform(c).spec for c in args.columns.split(",")]
    attacks = args.attacks.split(",")
    adaptive_aa = None if args.adaptive_aa == "all" else tuple(args.adaptive_aa.split(","))
    size = clf.spec.input_size
    config = RobustifyConfig(smooth_size=tuple(size) if size else None)
    variants = {"defaults": None, f"survive {Transform(args.survive).spec}": Transform(args.survive)}
    settings = {"model": args.model, "upscale": args.upscale, "columns": columns, "survive": Transform(args.survive).spec,
                "attacks": attacks, "adaptive_aa": list(adaptive_aa or ["all"]), "seed": args.seed,
                "threat": asdict(budget)}
    chunks = Path(args.chunks) if args.chunks else None
    if chunks is not None:
        chunks.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    command = "python -m bench.transforms " + " ".join(sys.argv[1:] if argv is None else argv)

    def write(done: list) -> str:
        """The table of ``done`` (this run's chunks, or every chunk of the folder), written where asked."""
        result = table(done, attacks, columns)
        result.update({"command": command, "model": args.model, "adaptive_aa": settings["adaptive_aa"],
                       "upscale": args.upscale, "image_size": list(x.shape[-2:]), "threat": asdict(budget),
                       "columns": columns, "attacks": attacks, "seconds": time.perf_counter() - t0,
                       "ran": sum(c["end"] - c["first"] for c in ran),
                       "complete": covers(result["images"], args.start, args.start + len(x))})
        md = markdown(result)
        if args.json:  # after every batch, so that an interrupted run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        if args.markdown:
            Path(args.markdown).write_text(md + "\n")
        return md

    ran = []  # this run's chunks
    md = None
    for i in range(0, len(x), args.batch):
        first = args.start + i
        xb, yb = x[i:i + args.batch], y[i:i + args.batch]
        path = chunks / f"{first:05d}-{first + len(xb):05d}.json" if chunks is not None else None
        if path is not None and path.exists():
            chunk = json.loads(path.read_text())
            if chunk["settings"] != settings:
                ap.error(f"{path} was made with other settings ({chunk['settings']}); use another --chunks folder")
            print(f"images {first}-{first + len(xb)}: taken from {path}", flush=True)
            continue
        if args.from_chunks:
            print(f"images {first}-{first + len(xb)}: no chunk {path.name} in {chunks}, not run", flush=True)
            continue
        chunk = {"settings": settings, "first": first, "end": first + len(xb), "masks": {}, "reports": {},
                 "seconds": {}}
        torch.manual_seed(args.seed + first)
        chunk["masks"]["originals"] = as_bits(attack_columns(clf.model, xb, yb, threat, columns, attacks, adaptive_aa))
        for variant, survive in variants.items():
            torch.manual_seed(args.seed + first)
            start = time.perf_counter()
            out = protect_images(clf.model, [DecodedImage(pixels=xi, alpha=None, format="png") for xi in xb], budget,
                                 config, strength="medium", survive=survive)
            chunk["seconds"][variant] = time.perf_counter() - start
            chunk["reports"][variant] = [r.report for r in out]
            xr = torch.stack([r.pixels for r in out])
            torch.manual_seed(args.seed + first)
            chunk["masks"][variant] = as_bits(attack_columns(clf.model, xr, yb, threat, columns, attacks, adaptive_aa))
        ran.append(chunk)
        if path is not None:
            path.write_text(json.dumps(chunk) + "\n")
        print(f"images {first}-{first + len(xb)} done, {time.perf_counter() - t0:.0f} s", flush=True)
        md = write(ran if chunks is None else load_chunks(chunks, settings))
    if md is None:  # every batch was in --chunks already (or --from-chunks): the table of the folder
        found = load_chunks(chunks, settings)
        if not found:
            ap.error(f"no chunk in {chunks} was made with these settings")
        md = write(found)
    print(md)
    return 0


def covers(images: list, first: int, end: int) -> bool:
    """Whether the merged ranges ``images`` hold every test image from ``first`` to ``end`` (exclusive)."""
    return any(a <= first and end <= b for a, b in images)


def as_bits(found: dict) -> dict:
    """:func:`attack_columns`' masks as strings of 0/1 per image (JSON that stays readable in a diff)."""
    return {col: {key: "".join("1" if b else "0" for b in mask.tolist()) for key, mask in m.items()}
            for col, m in found.items()}


def load_chunks(folder: Path, settings: dict) -> list:
    """Every chunk in ``folder`` made with ``settings``, in order of its first image; overlapping chunks are an
    error (two runs with other batch boundaries over the same images)."""
    chunks = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda c: c["first"])
    chunks = [c for c in chunks if c["settings"] == settings]
    for a, b in zip(chunks, chunks[1:]):
        if b["first"] < a["end"]:
            raise SystemExit(f"chunks {a['first']}-{a['end']} and {b['first']}-{b['end']} in {folder} overlap")
    return chunks


def table(chunks: list, attacks: list, columns: list) -> dict:
    """:func:`summarise` over ``chunks`` (each a batch's bits, reports and seconds), with the images covered."""
    masks, reports, seconds = {}, {}, {}
    for c in chunks:
        for variant, found in c["masks"].items():
            for col, m in found.items():
                for key, bits in m.items():
                    masks.setdefault(variant, {}).setdefault(col, {}).setdefault(key, []).append(
                        torch.tensor([b == "1" for b in bits]))
        for variant, rs in c["reports"].items():
            reports.setdefault(variant, []).extend(rs)
            seconds[variant] = seconds.get(variant, 0.0) + c["seconds"][variant]
    result = summarise(masks, reports, seconds, attacks, columns)
    ranges = [[c["first"], c["end"]] for c in chunks]
    merged = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    result.update({"n": sum(b - a for a, b in ranges), "images": merged,
                   "start": ranges[0][0] if ranges else None})
    return result


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
    covered = ", ".join(f"{a}-{b - 1}" for a, b in result.get("images", [[result["start"], result["start"] + result["n"]]]))
    lines = [f"{result['n']} test images ({covered}), {result['image_size'][0]}x{result['image_size'][1]} px, "
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
