"""A check that stops on the files it has decided: cheap attacks first, AutoAttack's 100 iterations only where the
margin says the file is close.

    python -m bench.decide --keep DIR [--against aa] [--runs 2] [--floors 0.25,0.5,1,2,3] [--json F] [--markdown F]
    python -m bench.decide --keep DIR --product 0.25,1,inf [--json F] [--markdown F]

``DIR`` is a ``bench.defaults --keep`` folder whose ``defaults`` row was evaluated with AutoAttack
(``defaults.pt``, ``defaults.eval.json``). On the files of that row that keep their label, every part of the
product's check and of the candidates runs alone on all of them (not in a cascade), ``--runs`` times from other
random draws (run ``k``: torch seeded ``10 + k``, the APGD stages with seed ``k``), keeping per file whether it
broke the file and the margin it ended on (the label's logit minus the next): PGD-20 (1 start), APGD-CE at 100
iterations, APGD-T toward each runner-up class ``r`` (rank 1 = the most likely wrong class at the file) at 25 and,
for ranks 1-3, at 100 iterations.

Each check is a cascade of those parts, the product's way (each stage on the files the previous ones left, the
lowest margin kept), with the product's recheck of close calls (a file passed with a margin under
``RECHECK_MARGIN`` is judged by run 1 and must clear that margin there):

- ``current``: the product's check: PGD-20, APGD-CE @100, APGD-T @100 toward ranks 1-3 and @25 toward ranks 4-9;
- ``screen, then @100 below m``: PGD-20, APGD-CE @100, APGD-T @25 toward all nine; then APGD-T @100 toward ranks
  1-3 only on the files whose lowest margin so far is under ``m`` (the others are decided).

Scored against the row's own full AutoAttack verdicts (standard, all four components, true label): files called
robust, those of them AutoAttack breaks (the report's error) and the classifier passes per file (iterations times
files attacked, summed over stages and the recheck, over all files of the row). Parts run alone differ from the
product's cascade in their random draws only (APGD draws its start from the global generator).

``--product FLOORS`` runs the product's own check instead (``verify_robust(decide_above=floor)``, the recheck of
close calls included; ``inf``: the tiered check on every file) on the row's files, each floor from torch seeded 0,
and counts its passes: the verdicts a pipeline with that floor gives these files.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import emit, kept_row
from bench.defaults import Counted
from preempt.core.attacks import pgd
from preempt.core.autoattack import apgd_single, margin_of
from preempt.core.data import fashion_mnist
from preempt.core.protect import RECHECK_MARGIN, verify_robust
from preempt.core.threat import ThreatModel

TOP = 3  # the runner-up ranks that get AutoAttack's 100 iterations


def parts_of(classes: int) -> list:
    """Every part a check below is built from: ``(key, rank or None, iterations)``."""
    parts = [("pgd-20", None, 20), ("apgd-ce@100", None, 100)]
    parts += [(f"apgd-t{r}@25", r, 25) for r in range(1, classes)]
    parts += [(f"apgd-t{r}@100", r, 100) for r in range(1, min(TOP, classes - 1) + 1)]
    return parts


def run_parts(model, x, y, threat, classes: int, seed: int, batch: int) -> dict:
    """Per part: the margin each file ends on (negative where the part broke it), every part alone on all files."""
    out = {"clean": margin_of(model, x, y)}
    for key, rank, steps in parts_of(classes):
        ms = []
        for i in range(0, len(x), batch):
            xs, ys = x[i:i + batch], y[i:i + batch]
            torch.random.manual_seed(10 + seed if key == "pgd-20" else seed)
            if key == "pgd-20":
                m = margin_of(model, pgd(model, xs, ys, threat.geometry, threat.epsilon, steps=20, restarts=1), ys)
            else:
                fooled, m = apgd_single(model, xs, ys, threat.norm, threat.epsilon, classes, steps, rank, seed)
                m = torch.where(fooled, torch.minimum(m, torch.full_like(m, -1e-6)), m)
            ms.append(m)
        out[key] = torch.cat(ms)
    return out


def cascade(stages: list, margins: dict, below: float = float("inf")) -> tuple:
    """``(robust, margin, passes)`` of a check run as the product runs one: each stage ``(part, iterations, only if
    close)`` on the files the previous ones left (with ``only if close``: of those, the ones whose lowest margin so
    far is under ``below``), from the parts' ``margins`` (:func:`run_parts`). ``passes``: summed over files, one
    per iteration and one for the pass that judges the candidate."""
    margin = margins["clean"].clone()
    robust = margin > 0
    passes = 0
    for key, steps, only_close in stages:
        on = robust & (margin < below) if only_close else robust
        passes += (steps + 1) * int(on.sum())  # the iterations and the pass that judges the candidate
        m = margins[key]
        margin = torch.where(on, torch.minimum(margin, m), margin)
        robust &= ~(on & (m <= 0))
    return robust, margin, passes


def checks(classes: int, floors: list) -> dict:
    """Each check by name: its stages ``(part, iterations, only if close)`` and the margin under which a file is
    close (``None``: every stage runs on every file left)."""
    top = range(1, min(TOP, classes - 1) + 1)
    first = [("pgd-20", 20, False), ("apgd-ce@100", 100, False)]
    current = first + [(f"apgd-t{r}@{100 if r in top else 25}", 100 if r in top else 25, False)
                       for r in range(1, classes)]
    screen = first + [(f"apgd-t{r}@25", 25, False) for r in range(1, classes)]
    out = {"current": (current, None), "screen only (apgd-t @25 toward all nine)": (screen, None)}
    for m in floors:
        out[f"screen, then @100 toward ranks 1-{len(top)} below margin {m:g}"] = \
            (screen + [(f"apgd-t{r}@100", 100, True) for r in top], m)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", required=True, help="a bench.defaults --keep folder with an AutoAttack-evaluated "
                    "defaults row")
    ap.add_argument("--against", default="aa", help="the row's attack whose per-file verdicts score the checks "
                    "(default aa: full AutoAttack)")
    ap.add_argument("--runs", type=int, default=2, help="draws of every part (run 1 judges the recheck)")
    ap.add_argument("--floors", default="0.25,0.5,1,2,3")
    ap.add_argument("--product", metavar="FLOORS", help="instead of the parts: the product's own check "
                    "(verify_robust, the recheck of close calls included) with each decide_above of this comma list "
                    "(inf: the tiered check on every file) on the row's files, torch seeded 0, in batches of --batch")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--limit", type=int, help="only the row's first N files (a quick look; the rows' passes are per "
                    "file of those N)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    made, evaluation = kept_row(ap, args.keep, args.against)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    floors = [float(f) for f in args.floors.split(",") if f.strip()]
    stamp = made["stamp"]
    from preempt.core.models import load_classifier

    model = load_classifier(stamp["model"]).model
    threat = ThreatModel(**stamp["threat"])
    y_true = fashion_mnist("test", limit=stamp["n"])[1][:args.limit]
    x, labels = made["x"][:args.limit], made["labels"][:args.limit]
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    classes = logits.shape[1]
    kept = (logits.argmax(1) == labels).nonzero().flatten()
    aa_robust = torch.tensor([c == "1" for c in evaluation["robust_per_file"][args.against]])[:args.limit]
    true = (labels == y_true)[kept]
    broken = true & ~aa_robust[kept]
    n_all = len(x)
    t0 = time.time()

    def row(name, robust, passes):
        return {"check": name, "verified": int(robust.sum()), "true_label": int((robust & true).sum()),
                "broken": int((robust & broken).sum()),
                "error": round(int((robust & broken).sum()) / max(1, int((robust & true).sum())), 4),
                "passes": round(passes / n_all, 1)}

    reported = made["verified"][:args.limit][kept] if made["verified"] is not None else None
    rows = [] if reported is None else [{**row("the row's reports (the product's own run)", reported, 0),
                                         "passes": made["row"].get("passes_check")}]
    xk, yk = x[kept], labels[kept]
    result = {"keep": args.keep, "stamp": stamp, "against": args.against, "files_with_label": len(kept),
              "recheck_margin": RECHECK_MARGIN}
    cols = ["check", "verified", "true_label", "broken", "error", "passes"]
    if args.product:
        counted = Counted(model)
        for floor in (float(f) for f in args.product.split(",")):
            counted.counts = {}
            torch.manual_seed(0)
            robust = torch.cat([verify_robust(counted, xk[i:i + args.batch], yk[i:i + args.batch], threat,
                                              decide_above=floor) for i in range(0, len(kept), args.batch)])
            name = "the tiered check on every file" if floor == float("inf") else f"decided above margin {floor:g}"
            rows.append(row(f"product: {name}", robust, sum(counted.counts.values())))
            print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
        emit({**result, "seconds": round(time.time() - t0, 1), "rows": rows}, cols, args.json, args.markdown)
        return 0
    runs = []
    for k in range(args.runs):
        runs.append(run_parts(model, xk, yk, threat, classes, k, args.batch))
        print(f"run {k}: {len(kept)} files, every part ({time.time() - t0:.0f} s)", flush=True)

    for name, (stages, below) in checks(classes, floors).items():
        below = float("inf") if below is None else below
        r0, m0, p0 = cascade(stages, runs[0], below)
        rows.append(row(f"{name}, one run", r0, p0))
        if len(runs) > 1:
            close = r0 & (m0 < RECHECK_MARGIN)
            r1, m1, p1 = cascade(stages, runs[1], below)
            robust = r0 & (~close | (r1 & (m1 >= RECHECK_MARGIN)))
            # the recheck's passes: run 1 on the close calls only
            p_close = cascade(stages, {k: v[close] for k, v in runs[1].items()}, below)[2] if close.any() else 0
            rows.append(row(f"{name}, with the recheck of close calls", robust, p0 + p_close))
    screen = checks(classes, [])["screen only (apgd-t @25 toward all nine)"][0]
    r0, m0, _ = cascade(screen, runs[0])
    qs = (0.01, 0.05, 0.1, 0.25, 0.5)
    result.update({"seconds": round(time.time() - t0, 1),
              # where the screen's margins lie on the files it passes, and on those of them AutoAttack breaks
              "screen_margin_quantiles": dict(zip(map(str, qs), torch.quantile(m0[r0], torch.tensor(qs)).tolist()))
              if r0.any() else {},
              "screen_margins_of_aa_broken": sorted(round(float(v), 4) for v in m0[r0 & broken]),
              "rows": rows})
    print("screen margins of the files it passes, quantiles:", result["screen_margin_quantiles"])
    print("screen margins of those AutoAttack breaks:", result["screen_margins_of_aa_broken"])
    emit(result, cols, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
