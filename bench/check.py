"""What the protection report's check needs: which attacks, which runner-up classes, how many iterations.

    python -m bench.check [-n 1000] [--model fmnist-linf-ours-12ep] [--norm linf] [--iters 25,50,100]
        [--json F] [--markdown F]
    python -m bench.check --files runs/keep/defaults.pt [...]   # the files bench.defaults --keep saved
    python -m bench.check --rescore F.json [--json F] [--markdown F]   # new candidates, same verdicts, no attack

The first ``n`` test images go through the product's pipeline at the defaults (``protect_images``: robustify,
the strength's scale, 8-bit PNG, decoded again, the report's check). On the decoded files that keep their
label, every part a check could be built from runs *alone on all of them* (not in a cascade): PGD-20 with 1
and 5 restarts, APGD-CE and APGD-T toward each runner-up class separately (rank 1 = the most likely wrong
class at the file), each at every iteration count of ``--iters``. The truth is full AutoAttack (standard:
APGD-CE, APGD-T over 9 classes, FAB-T, Square 5000). Each candidate check is then the cascade of its parts
(each on the files the previous ones left); the table says, per candidate, the share of files it calls
robust, the share of those AutoAttack breaks (the report's error) and the classifier passes per file it
costs (iterations x files attacked, summed over its stages, divided by all files). The candidates include
tiered ones (AutoAttack's 100 iterations toward the most likely runner-up classes, fewer toward the others);
the one the product runs is marked ``(current)``.

``--files F`` studies the files a ``python -m bench.defaults --keep DIR`` run wrote (``DIR/defaults.pt``: its
decoded files, their labels and its report's verdicts) instead of protecting the images again: the check
measured on exactly the files whose trust error that run reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import emit
from preempt.core.attacks import pgd
from preempt.core.autoattack import AutoAttack, apgd_t_target
from preempt.core.data import fashion_mnist
from preempt.core.images import DecodedImage
from preempt.core.models import load_classifier
from preempt.core.protect import APGD_T_STEPS, protect_images
from preempt.core.robustify import RobustifyConfig
from preempt.core.threat import ThreatModel
from preempt.registry import DEFAULT_MODEL
from preempt.request import DEFAULT_STRENGTH


def apgd_ce(model, norm, eps, iters, x, y) -> torch.Tensor:
    """Per-file: broken by APGD-CE at ``iters`` iterations (AutoAttack's component, seed 0)."""
    import torchattacks

    a = torchattacks.APGD(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, loss="ce", steps=iters,
                          n_restarts=1, seed=0)
    adv = a(x, y)
    with torch.no_grad():
        return model(adv).argmax(1) != y


def apgd_t_rank(model, norm, eps, iters, rank, x, y, classes) -> torch.Tensor:
    """Per-file: broken by APGD-T (DLR, targeted) toward the ``rank``-th most likely wrong class only."""
    torch.random.manual_seed(0)
    return apgd_t_target(model, x, y, norm, eps, classes, rank, iters)


def cascade(parts, broken: dict, n_all: int) -> tuple:
    """Robust mask and passes per file of the check whose stages are ``parts`` [(key, cost per file)]."""
    alive = torch.ones_like(next(iter(broken.values())))
    passes = 0
    for key, cost in parts:
        passes += cost * int(alive.sum())
        alive &= ~broken[key]
    return alive, passes / n_all


def candidates_for(classes: int, iters: list) -> dict:
    """Every candidate check: its name and its stages [(part, passes per file it attacks)], cheapest stage first."""
    cands = {"pgd-20x5, apgd-ce, apgd-t x9 @100 (the check before)":
             [("pgd-20x5", 105), ("apgd-ce@100", 100)] + [(f"apgd-t{r}@100", 100) for r in range(1, classes)]}
    for it in iters:
        for k in (1, 2, 3, 9):
            for first in ("pgd-20x1", None):
                parts = ([(first, 21)] if first else []) + [(f"apgd-ce@{it}", it)]
                parts += [(f"apgd-t{r}@{it}", it) for r in range(1, min(k, classes - 1) + 1)]
                cands[f"{first + ', ' if first else ''}apgd-ce, apgd-t x{k} @{it}"] = parts
        cands[f"apgd-t x3 @{it}"] = [(f"apgd-t{r}@{it}", it) for r in range(1, 4)]
    # tiered: AutoAttack's 100 iterations toward the most likely runner-up classes, fewer toward the rest
    for top in (1, 2, 3):
        for low in (it for it in iters if it < 100):
            steps = tuple(100 if r <= top else low for r in range(1, classes))
            name = f"pgd-20x1, apgd-ce @100, apgd-t x{top} @100 + x{classes - 1 - top} @{low}"
            cands[name + (" (current)" if steps == APGD_T_STEPS[:classes - 1] else "")] = \
                [("pgd-20x1", 21), ("apgd-ce@100", 100)] + [(f"apgd-t{r}@{it}", it) for r, it in enumerate(steps, 1)]
    return cands


def score(broken: dict, classes: int, iters: list, n_all: int) -> list:
    """One row per candidate whose parts were all measured: robust share, AutoAttack's breaks among the files it
    calls robust (count and share), the files it rejects that AutoAttack does not break, passes per file."""
    truth = ~broken["aa"]
    rows = []
    for name, parts in candidates_for(classes, iters).items():
        if any(key not in broken for key, _ in parts):
            continue
        robust, passes = cascade(parts, broken, n_all)
        wrong = robust & ~truth
        rows.append({"check": name, "verified": int(robust.sum()) / n_all,
                     "broken_by_aa": int(wrong.sum()), "error": int(wrong.sum()) / max(1, int(robust.sum())),
                     "missed": int((~robust & truth).sum()), "passes": passes})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--norm", choices=["linf", "l2"], default="linf")
    ap.add_argument("--epsilon", type=float, default=None, help="default 0.1 (linf) or 1.5 (l2); delta = epsilon")
    ap.add_argument("--iters", default="25,50,100", help="APGD iteration counts to try")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--rescore", metavar="JSON", help="run no attack: score the candidates again from the per-file "
                    "verdicts a previous run wrote (its --json)")
    ap.add_argument("--files", help="a bench.defaults --keep row file (DIR/defaults.pt) to study instead")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    if args.rescore:
        result = json.loads(Path(args.rescore).read_text())
        broken = {k: torch.tensor([c == "1" for c in v]) for k, v in result["per_file"].items()}
        classes = 1 + max(int(k[6:].split("@")[0]) for k in broken if k.startswith("apgd-t"))
        iters = sorted({int(k.split("@")[1]) for k in broken if "@" in k})
        result["rows"] = score(broken, classes, iters, result["n"])
        emit(result, ["check", "verified", "broken_by_aa", "error", "missed", "passes"], args.json, args.markdown)
        return 0
    torch.manual_seed(0)
    eps = args.epsilon or {"linf": 0.1, "l2": 1.5}[args.norm]
    threat = ThreatModel(args.norm, eps)
    model = load_classifier(args.model).model
    iters = [int(s) for s in args.iters.split(",")]
    t0 = time.time()
    files, labels, current = [], [], []
    if args.files:
        saved = torch.load(args.files, weights_only=False)
        if saved["verified"] is None:
            ap.error(f"{args.files}: a row without a check (use the defaults row)")
        n_saved = len(saved["x"])
        if args.start + args.n > n_saved:
            ap.error(f"{args.files} holds {n_saved} files; --start {args.start} -n {args.n} asks for more")
        part = slice(args.start, args.start + args.n)
        files, labels, current = list(saved["x"][part]), saved["labels"][part].tolist(), saved["verified"][part].tolist()
    else:
        x = fashion_mnist("test", limit=args.start + args.n)[0][args.start:]
        for k in range(0, args.n, args.batch):
            imgs = [DecodedImage(pixels=xi, alpha=None, format="png") for xi in x[k:k + args.batch]]
            for r in protect_images(model, imgs, threat, RobustifyConfig(), strength=DEFAULT_STRENGTH):
                files.append(r.pixels)
                labels.append(r.report["label"])
                current.append(r.report["verified"]["robust"])
            print(f"protected {len(files)}/{args.n} ({time.time() - t0:.0f} s)", flush=True)
    xf, y = torch.stack(files), torch.tensor(labels)
    with torch.no_grad():
        kept = model(xf).argmax(1) == y
    xk, yk = xf[kept], y[kept]
    classes = int(model(xk[:1]).shape[1])
    broken = {}

    def run(key, fn):
        t = time.time()
        broken[key] = torch.cat([fn(xk[i:i + args.batch], yk[i:i + args.batch]) for i in range(0, len(yk), args.batch)])
        print(f"{key}: breaks {int(broken[key].sum())}/{len(yk)} ({time.time() - t:.0f} s)", flush=True)

    aa = AutoAttack(model, args.norm, eps, num_classes=classes)
    with torch.no_grad():
        run("aa", lambda xb, yb: model(aa.run(xb, yb)).argmax(1) != yb)
    for restarts in (1, 5):
        run(f"pgd-20x{restarts}", lambda xb, yb, r=restarts: model(
            pgd(model, xb, yb, threat.geometry, eps, steps=20, restarts=r)).argmax(1) != yb)
    for it in iters:
        run(f"apgd-ce@{it}", lambda xb, yb, it=it: apgd_ce(model, args.norm, eps, it, xb, yb))
        for rank in range(1, classes):
            run(f"apgd-t{rank}@{it}", lambda xb, yb, it=it, rank=rank: apgd_t_rank(model, args.norm, eps, it, rank,
                                                                                  xb, yb, classes))
    truth = ~broken["aa"]
    rows = score(broken, classes, iters, args.n)
    result = {"model": args.model, "norm": args.norm, "epsilon": eps, "n": args.n, "start": args.start,
              "files": args.files,
              "kept": int(kept.sum()), "aa_robust": int(truth.sum()),
              "current_verified": sum(current), "seconds": time.time() - t0,
              "breaks": {k: int(v.sum()) for k, v in broken.items()},
              "aa_broken_by_rank": {r: int((broken[f"apgd-t{r}@100"] & broken["aa"]).sum()) for r in range(1, classes)}
              if 100 in iters else {}, "rows": rows,
              # per part, one character per file that keeps its label, in order: 1 = the part broke it
              "per_file": {k: "".join("1" if b else "0" for b in v.tolist()) for k, v in broken.items()}}
    print(f"{args.n} files, {int(kept.sum())} keep the label, full AutoAttack leaves {int(truth.sum())} robust")
    emit(result, ["check", "verified", "broken_by_aa", "error", "missed", "passes"], args.json, args.markdown)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
