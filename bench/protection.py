"""Protection ablation: which robustifier ingredients hold under AutoAttack (docs/science.md).

    python -m bench.protection [-n 200] [--model fmnist-linf-ours] [--norm linf] \\
        [--variants paper,cw,targeted3-max] [--attacks pgd,aa] [--whitebox] [--json F] [--markdown F]

The originals are attacked once; then each variant robustifies the same images (8-bit output, as a
user would send it) and is attacked by grey-box PGD-20 and AutoAttack (standard), optionally by
the white-box attack of Algorithms 3-4 (PGD, eps' sweep). Reports accuracy, gap closure, passes
per image and seconds per image for every variant, in one run on one machine.

Variants (``--variants``): ``paper`` (CE inner loss, mean over N = 1 start: the defaults), ``cw``
(margin inner loss), ``cw3-max``, ``targeted3-max``, ``targeted3-mean``, ``ce3-max`` (N = 3 starts;
``targeted`` aims start k at the k-th runner-up class; ``max`` lets the worst start drive the
update); ``paper-full`` (no early stopping); ``stop-ln2``, ``stop0.1``, ``stop0.02`` (early stopping
only below this inner-attack loss; ``paper`` is the default, ln 2 for linf and 0.1 for l2).

``--retry`` adds the row ``paper+retry``: the defaults through the product's pipeline
(``protect_images(retry=True)``: 8-bit PNGs, the report's check, and one second try with
``RETRY_CONFIG`` for the images the check rejects). ``--retry-configs targeted3-max-full,paper-full`` adds
one such row per second-try configuration (``bench.variants.RETRY_CONFIGS``), named ``paper+retry-<name>``
(``paper+retry`` is the product's ``RETRY_CONFIG``, ``targeted3-max-full``).

For each variant the images an attack breaks are split by the robustifier's own final robust loss:
above ln 2 (it found no robust point: a search or model limit) or below (its check was fooled: a
weakness of the inner attack that a stronger attack or check would catch).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench import emit, robust_accuracy, variants
from bench.variants import FULL_LOOP, RETRY_CONFIGS
from preempt.core.data import fashion_mnist
from preempt.core.evaluate import gap_closure
from preempt.core.images import decode, encode_png, quantize_within_budget
from preempt.core.models import load_classifier
from preempt.core.protect import RETRY_CONFIG, protect_images, verify_robust
from preempt.core.robustify import RobustifyConfig
from preempt.core.threat import ThreatModel
from preempt.registry import DEFAULT_MODEL

VARIANTS = {
    "paper": {},
    "cw": {"inner_loss": "cw"},
    "cw3-max": {"inner_loss": "cw", "samples": 3, "aggregate": "max"},
    "ce3-max": {"samples": 3, "aggregate": "max"},
    "targeted3-mean": {"inner_loss": "targeted", "samples": 3},
    "targeted3-max": {"inner_loss": "targeted", "samples": 3, "aggregate": "max"},
    "cw-outer": {"outer_loss": "cw"},
    "cw-cw": {"inner_loss": "cw", "outer_loss": "cw"},
    "targeted3-max-cw": {"inner_loss": "targeted", "samples": 3, "aggregate": "max", "outer_loss": "cw"},
    "random-init": {"init": "random"},
    "paper-full": FULL_LOOP,
    "random-init-full": {"init": "random", **FULL_LOOP},
    "stop-ln2": {"stop_loss": math.log(2)},  # linf's default, applied to l2
    "stop0.1": {"stop_loss": 0.1},
    "stop0.02": {"stop_loss": 0.02},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--start", type=int, default=0, help="first test image (images start .. start + n)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--norm", choices=["linf", "l2"], default="linf")
    ap.add_argument("--epsilon", type=float, default=None, help="default 0.1 (linf) or 1.5 (l2); delta = epsilon")
    ap.add_argument("--variants", default="paper,cw,targeted3-max")
    ap.add_argument("--attacks", default="pgd,aa")
    ap.add_argument("--whitebox", action="store_true", help="also the white-box PGD of Algorithms 3-4")
    ap.add_argument("--verify", action="store_true",
                    help="also the protection report's check (verify_robust, 'apgd') on each output: how many it "
                         "calls robust, and how many of those an attack still breaks")
    ap.add_argument("--retry", action="store_true",
                    help="also the defaults through protect_images(retry=True): 8-bit PNGs, the report's check, and one "
                         "second try (RETRY_CONFIG) for the images it rejects")
    ap.add_argument("--retry-configs", default=None,
                    help="comma-separated second-try configurations for the retry rows (implies --retry; "
                         f"choose from {', '.join(RETRY_CONFIGS)}; default: RETRY_CONFIG)")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    if set(names) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(set(names) - set(VARIANTS))}; choose from {sorted(VARIANTS)}")
    attacks = [a for a in args.attacks.split(",") if a]
    default_rc = next(name for name, rc in RETRY_CONFIGS.items() if rc == RETRY_CONFIG)
    retry_configs = [c for c in (args.retry_configs or (default_rc if args.retry else "")).split(",") if c]
    if set(retry_configs) - set(RETRY_CONFIGS):
        ap.error(f"unknown retry configs {sorted(set(retry_configs) - set(RETRY_CONFIGS))}; "
                 f"choose from {sorted(RETRY_CONFIGS)}")
    eps = args.epsilon or (0.1 if args.norm == "linf" else 1.5)
    threat = ThreatModel(args.norm, eps, eps)
    x, y = fashion_mnist("test", limit=args.start + args.n)
    x, y = x[args.start:], y[args.start:]
    x, y = x.to(args.device), y.to(args.device)
    model = load_classifier(args.model, device=args.device).model
    with torch.no_grad():
        labels = torch.cat([model(x[i:i + args.batch]).argmax(1) for i in range(0, len(x), args.batch)])
    torch.manual_seed(args.seed)
    rows = [{"variant": "none", **robust_accuracy(model, x, y, threat, attacks, args.batch)}]
    print(rows[-1], flush=True)
    for v in names:
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        outs, losses, passes = [], [], 0.0
        for i in range(0, len(x), args.batch):
            r = variants.run(model, x[i:i + args.batch], threat, VARIANTS[v], y=labels[i:i + args.batch])
            outs.append(quantize_within_budget(r.x_rob, x[i:i + args.batch], threat.norm, threat.delta))
            passes += r.passes * len(outs[-1])
            losses.append(r.robust_loss)
        sec = time.perf_counter() - t0
        xr = torch.cat(outs)
        masks = {}
        row = {"variant": v, "config": VARIANTS[v], "passes_per_image": round(passes / len(x), 1),
               "seconds_per_image": round(sec / len(x), 4),
               **robust_accuracy(model, xr, y, threat, attacks, args.batch,
                                 whitebox_of=x if args.whitebox else None, robust_loss=torch.cat(losses), masks=masks)}
        if args.verify:
            t0 = time.perf_counter()
            verified = torch.cat([verify_robust(model, xr[i:i + args.batch], y[i:i + args.batch], threat, "apgd")
                                  for i in range(0, len(x), args.batch)])
            row["verify_seconds_per_image"] = round((time.perf_counter() - t0) / len(x), 4)
            row["verified"] = float(verified.float().mean())
            for a in attacks:
                row[f"verified_broken_by_{a}"] = int((verified & ~masks[a]).sum())
        for a in attacks:
            row[f"gap_closure_{a}"] = gap_closure(rows[0], row, f"greybox_{a}")
        rows.append(row)
        print(row, flush=True)
    for rc in retry_configs:  # the defaults through the product's own pipeline (8-bit PNGs), check and one retry
        torch.manual_seed(args.seed)
        images = [decode(encode_png(x[i].cpu())) for i in range(len(x))]
        t0 = time.perf_counter()
        results = []
        for i in range(0, len(x), args.batch):
            results += protect_images(model, images[i:i + args.batch], threat, RobustifyConfig(), device=args.device,
                                      retry=True, retry_config=RETRY_CONFIGS[rc])
        sec = time.perf_counter() - t0
        xr = torch.stack([r.pixels for r in results]).to(args.device)
        masks = {}
        name = "paper+retry" if RETRY_CONFIGS[rc] == RETRY_CONFIG else f"paper+retry-{rc}"
        row = {"variant": name, "config": {"retry": RETRY_CONFIGS[rc]},
               "passes_per_image": round(sum(r.report["passes"] for r in results) / len(x), 1),
               "seconds_per_image": round(sec / len(x), 4),
               "retried": sum(r.report["retried"] for r in results),
               "retried_now_verified": sum(r.report["retried"] and r.report["verified"]["robust"] for r in results),
               **robust_accuracy(model, xr, y, threat, attacks, args.batch, masks=masks)}
        verified = torch.tensor([r.report["verified"]["robust"] for r in results], device=xr.device) & (
            torch.tensor([r.report["label"] for r in results], device=xr.device) == y)
        row["verified"] = float(verified.float().mean())
        for a in attacks:
            row[f"verified_broken_by_{a}"] = int((verified & ~masks[a]).sum())
            row[f"gap_closure_{a}"] = gap_closure(rows[0], row, f"greybox_{a}")
        rows.append(row)
        print(row, flush=True)
    cols = ["variant", "passes_per_image", "seconds_per_image", "clean"] + [f"greybox_{a}" for a in attacks] + \
        (["whitebox_pgd"] if args.whitebox else []) + [f"gap_closure_{a}" for a in attacks] + \
        [f"broken_{a}_loss_{s}_ln2" for a in attacks for s in ("above", "below")] + \
        (["verified"] + [f"verified_broken_by_{a}" for a in attacks] if args.verify or retry_configs else []) + \
        (["retried", "retried_now_verified"] if retry_configs else [])
    result = {"n_images": len(x), "start": args.start, "model": args.model, "norm": args.norm, "epsilon": eps, "delta": eps,
              "device": args.device, "threads": torch.get_num_threads(), "rows": rows}
    emit(result, cols, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
