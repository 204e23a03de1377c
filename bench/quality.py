"""What protection costs in visibility, and what each strength keeps of the protection (docs/quality.md).

    python -m bench.quality [-n 200] [--model fmnist-linf-ours-12ep] [--delta D] [--strengths high,medium,low]
        [--attacks pgd,aa] [--photos examples/photos] [--photo-strengths high,medium,low] [--no-per-pixel]
        [--json F] [--markdown F] [--crops DIR]

A setting is a strength, optionally with texture masking: ``medium+texture`` (the product's floor, a quarter
of delta in flat areas) or ``medium+texture:0.5``.

Fashion-MNIST: the first ``n`` test images through the product's pipeline (``protect_images``: robustify,
8-bit PNG, the check on the written file, then the strength's shrinking) at each strength, from the same
seed; then grey-box PGD-20 and AutoAttack (standard) on the written files. Per strength: PSNR (mean over
the images that changed; the unchanged share beside it), SSIM (mean over all), the budget used (mean
linf / delta), the share written with the texture-shaped change, the verified rate, robustification passes
per image, accuracy and gap closure under each attack, seconds per image.

Photos (``--photos``): each file in the folder through the same pipeline (its change at the model's
resolution, upsampled, unless ``--no-smooth``), per strength and with the old per-pixel change
(``high/per-pixel``): PSNR, SSIM, verified, seconds. ``--crops DIR`` writes a before/after crop of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench import card_threat, emit, robust_accuracy
from preempt.core.data import fashion_mnist
from preempt.core.evaluate import gap_closure
from preempt.core.images import DecodedImage, decode
from preempt.core.models import load_classifier
from preempt.core.protect import STRENGTHS, protect_images
from preempt.core.robustify import RobustifyConfig
from preempt.registry import DEFAULT_MODEL
from preempt.request import TEXTURE_FLOOR


def summarise(reports: list, seconds: float) -> dict:
    psnr = [r["psnr"] for r in reports if r["psnr"] is not None]
    return {
        "psnr_changed": statistics.mean(psnr) if psnr else None,
        "unchanged": sum(r["psnr"] is None for r in reports) / len(reports),
        "ssim": statistics.mean(r["ssim"] for r in reports),
        "budget_used": statistics.mean((r["linf"] if r["norm"] == "linf" else r["l2"]) / r["delta"] for r in reports),
        "verified": sum(bool(r.get("verified", {}).get("robust")) for r in reports) / len(reports),
        "shaped": sum(bool(r.get("texture")) for r in reports) / len(reports),
        "passes": statistics.mean(r["passes"] for r in reports),
        "mean_scale": statistics.mean(r.get("scale", 1.0) for r in reports),
        "seconds_per_image": seconds / len(reports),
    }


def setting(name: str) -> tuple:
    """``(strength, texture_floor)`` of a setting's name: ``medium``, ``medium+texture`` (the product's floor) or
    ``medium+texture:0.5``."""
    strength, _, texture = name.partition("+")
    if strength not in STRENGTHS or texture.split(":")[0] not in ("", "texture"):
        raise SystemExit(f"unknown setting {name!r}: a strength ({', '.join(STRENGTHS)}), optionally +texture[:FLOOR]")
    if not texture:
        return strength, None
    return strength, float(texture.split(":")[1]) if ":" in texture else TEXTURE_FLOOR


def fashion_mnist_rows(args, clf, threat, save=lambda rows: None) -> list:
    x, y = fashion_mnist("test", limit=args.n)[:2]
    model = clf.model
    attacks = args.attacks.split(",")
    rows = [{"strength": "none (originals)", **robust_accuracy(model, x, y, threat, attacks, args.batch)}]
    print(rows[0], flush=True)
    images = [DecodedImage(pixels=xi, alpha=None, format="png") for xi in x]
    for name in args.strengths.split(","):
        strength, floor = setting(name)
        torch.manual_seed(0)
        start = time.perf_counter()
        results = []
        for k in range(0, len(images), args.batch):
            results += protect_images(model, images[k:k + args.batch], threat, RobustifyConfig(texture_floor=floor),
                                      strength=strength)
        seconds = time.perf_counter() - start
        xr = torch.stack([r.pixels for r in results])
        row = {"strength": name, **summarise([r.report for r in results], seconds),
               **robust_accuracy(model, xr, y, threat, attacks, args.batch)}
        for a in attacks:
            row[f"gap_closure_{a}"] = gap_closure(rows[0], row, f"greybox_{a}")
        rows.append(row)
        print(row, flush=True)
        save(rows)  # a run stopped early keeps the rows it finished
    return rows


def photo_rows(args, clf, threat) -> list:
    rows = []
    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    size = tuple(clf.spec.input_size) if clf.spec.input_size else None
    settings = [(s, size) for s in args.photo_strengths.split(",")] + ([("high/per-pixel", None)]
                                                                       if args.per_pixel else [])
    for path in files:
        img = decode(path.read_bytes())
        for name, smooth in settings:
            strength, floor = setting(name.split("/")[0])
            torch.manual_seed(0)
            start = time.perf_counter()
            r = protect_images(clf.model, [img], threat, RobustifyConfig(smooth_size=smooth, texture_floor=floor),
                               strength=strength)[0]
            row = {"photo": path.name, "size": f"{img.pixels.shape[2]}x{img.pixels.shape[1]}", "strength": name,
                   **summarise([r.report], time.perf_counter() - start)}
            rows.append(row)
            print(row, flush=True)
            if args.crops:
                save_crop(Path(args.crops), path, img, r.pixels, name)
    return rows


def save_crop(folder: Path, path: Path, img: DecodedImage, protected: torch.Tensor, name: str) -> None:
    """The original and the protected image side by side, a 160x160 crop from the middle, at 2x."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    _, h, w = img.pixels.shape
    top, left = max(0, h // 2 - 80), max(0, w // 2 - 80)

    def crop(t):
        a = (t[:, top:top + 160, left:left + 160].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        pic = Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)
        return pic.resize((pic.width * 2, pic.height * 2), Image.NEAREST)

    a, b = crop(img.pixels), crop(protected)
    out = Image.new("RGB", (a.width * 2 + 8, a.height), "white")
    out.paste(a, (0, 0))
    out.paste(b, (a.width + 8, 0))
    out.save(folder / f"{path.stem}-{name.replace('/', '-').replace('+', '-').replace(':', '')}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200, help="Fashion-MNIST test images (0: none)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--strengths", default=",".join(STRENGTHS))
    p.add_argument("--photo-strengths", default=",".join(STRENGTHS))
    p.add_argument("--attacks", default="pgd,aa")
    p.add_argument("--delta", type=float, default=None, help="the protection's budget (default: epsilon)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--photos", default=None, help="a folder of photos (examples/photos)")
    p.add_argument("--no-per-pixel", dest="per_pixel", action="store_false",
                   help="photos: leave out the per-pixel change at strength high (the earlier defaults)")
    p.add_argument("--crops", default=None, help="write before/after crops of the photos here")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    for name in args.strengths.split(",") + args.photo_strengths.split(","):
        setting(name)  # a setting it does not know stops it before any work
    clf = load_classifier(args.model)
    threat = card_threat(args.model, delta=args.delta)
    result = {"model": args.model, "n": args.n, "threat": asdict(threat), "rows": [],
              "photos": []}
    def save(rows):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**result, "rows": rows}, indent=2, default=str) + "\n")

    if args.n:
        result["rows"] = fashion_mnist_rows(args, clf, threat, save)
    if args.photos:
        result["photos"] = photo_rows(args, clf, threat)
    cols = ["strength", "psnr_changed", "unchanged", "ssim", "budget_used", "mean_scale", "shaped", "verified",
            "passes", "clean",
            *[f"greybox_{a}" for a in args.attacks.split(",")],
            *[f"gap_closure_{a}" for a in args.attacks.split(",")], "seconds_per_image"]
    md = emit(result, cols) if result["rows"] else ""
    save(result["rows"])  # the photos too
    if result["photos"]:
        md += emit({"rows": result["photos"]}, ["photo", "size", "strength", "psnr_changed", "ssim", "budget_used",
                                                "mean_scale", "shaped", "verified", "passes", "seconds_per_image"])
    if args.markdown:
        Path(args.markdown).write_text(md)


if __name__ == "__main__":
    main()
