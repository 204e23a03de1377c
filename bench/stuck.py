"""Which images does robustification leave attackable, and could any setting protect them?

    python -m bench.stuck [-n 200] [--model fmnist-linf-adv] [--deltas 0.1,0.15,0.2] [--json F]

Robustifies the first n Fashion-MNIST test images at the defaults (linf eps = delta = 0.1), keeps
the correctly classified images that PGD-20 (5 restarts) still breaks, and for each prints the
classifier's two most likely classes and their probabilities on the original. Then it robustifies
those images again with much more effort (the paper's full loop: no early stopping; the margin
outer loss; 8 random starts and 300 iterations) and with larger delta, and reports for each run
which images pass the protection report's checks: PGD-20 x 5 (``pgd``) and PGD then APGD-CE and
APGD-T (``apgd``). If more effort at delta = 0.1 does not help and a larger delta does, the limit
is the threat (no robust point within delta), not the search.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import emit
from preempt.core.data import fashion_mnist
from preempt.core.images import quantize_within_budget
from preempt.core.models import load_classifier
from preempt.core.protect import verify_robust
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel

EFFORT = {
    "paper-full": {"stop_patience": 0, "plateau_window": 0},
    "cw-outer-full": {"outer_loss": "cw", "stop_patience": 0, "plateau_window": 0},
    "n8-300it-full": {"samples": 8, "iterations": 300, "stop_patience": 0, "plateau_window": 0},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--model", default="fmnist-linf-adv")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--deltas", default="0.1,0.15,0.2", help="delta of each effort run; the effort variants run at the first")
    ap.add_argument("--efforts", default=",".join(EFFORT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    eps = args.epsilon
    deltas = [float(d) for d in args.deltas.split(",") if d]
    x, y = fashion_mnist("test", limit=args.n)
    model = load_classifier(args.model).model
    threat = ThreatModel("linf", eps, deltas[0])
    with torch.no_grad():
        label = model(x).argmax(1)
    correct = label == y
    torch.manual_seed(args.seed)
    r = robustify(model, x, threat, RobustifyConfig(), y=label)
    xq = quantize_within_budget(r.x_rob, x, "linf", threat.delta)
    torch.manual_seed(args.seed)
    stuck = (correct & ~verify_robust(model, xq, label, threat, "pgd")).nonzero().flatten()
    with torch.no_grad():
        top = torch.softmax(model(x[stuck]), 1).topk(2, 1)
    print(f"{int(correct.sum())} of {len(x)} correctly classified; {stuck.numel()} still broken by PGD-20 x 5 "
          f"after robustification at the defaults", flush=True)
    images = [{"index": int(i), "label": int(label[i]), "p_label": round(float(top.values[k, 0]), 3),
               "runner_up": int(top.indices[k, 1]), "p_runner_up": round(float(top.values[k, 1]), 3),
               "robust_loss": round(float(r.robust_loss[i]), 3)} for k, i in enumerate(stuck.tolist())]
    runs = [(name, deltas[0], EFFORT[name]) for name in args.efforts.split(",") if name] + \
        [("paper-full", d, EFFORT["paper-full"]) for d in deltas[1:]]
    rows = []
    for name, delta, cfg in runs:
        if stuck.numel() == 0:
            break
        t = ThreatModel("linf", eps, delta)
        torch.manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        rr = robustify(model, x[stuck], t, RobustifyConfig(**cfg), y=label[stuck])
        out = quantize_within_budget(rr.x_rob, x[stuck], "linf", delta)
        row = {"run": name, "delta": delta, "passes_per_image": round(rr.passes, 1),
               "seconds": round(time.perf_counter() - t0, 1)}
        for check in ("pgd", "apgd"):
            torch.manual_seed(args.seed)
            ok = verify_robust(model, out, label[stuck], t, check)
            row[f"robust_{check}"] = int(ok.sum())
            row[f"robust_{check}_images"] = [int(i) for i in stuck[ok].tolist()]
        row["robust_loss"] = [round(float(v), 3) for v in rr.robust_loss]
        rows.append(row)
        print(row, flush=True)
    result = {"model": args.model, "n_images": len(x), "epsilon": eps, "correct": int(correct.sum()),
              "stuck": images, "rows": rows}
    for im in images:
        print(im)
    emit(result, ["run", "delta", "passes_per_image", "seconds", "robust_pgd", "robust_apgd"], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
