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
the tiered one (``protect.APGD_T_STEPS``, the product's check before the decided check of bench.decide) is marked
``(current)``.

``--files F`` studies the files a ``python -m bench.defaults --keep DIR`` run wrote (``DIR/defaults.pt``: its
decoded files, their labels and its report's verdicts) instead of protecting the images again: the check
measured on exactly the files whose trust error that run reports. Then, on such a study's JSON and the same
``--files`` (each adds to the JSON):

    python -m bench.check --files D/defaults.pt --aa-again F.json [--aa-seed 1]   # AutoAttack again, other draws
    python -m bench.check --files D/defaults.pt --explain F.json    # each AA component alone on the report's errors
    python -m bench.check --files D/defaults.pt --margins F.json [--markdown M]   # the check with a margin; a
                                                                    # second run of it on close calls
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import emit
from preempt.core.attacks import pgd
from preempt.core.autoattack import STANDARD, AutoAttack, apgd_single, apgd_t_target, margin_of
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


def load_study(path: Path, files: str) -> dict:
    """A previous study's JSON at ``path`` and the files it measured (``--files``, a bench.defaults --keep row file),
    restricted as the study was to the files that keep their label: ``x``, ``y`` (the report's labels), ``called``
    (the report's verdicts), ``true`` (the label is the test image's own: bench.defaults writes images 0.. in
    order), ``aa`` (the study's AutoAttack broke it), the model and its class count."""
    result = json.loads(path.read_text())
    saved = torch.load(files, weights_only=False)
    part = slice(result["start"], result["start"] + result["n"])
    xf, y, called = saved["x"][part], saved["labels"][part], saved["verified"][part].bool()
    model = load_classifier(result["model"]).model
    with torch.no_grad():
        kept = model(xf).argmax(1) == y
    aa = torch.tensor([c == "1" for c in result["per_file"]["aa"]])
    if int(kept.sum()) != len(aa):
        raise SystemExit(f"{files} does not hold the files {path} was measured on")
    truth = fashion_mnist("test", limit=result["start"] + result["n"])[1][part]
    return {"result": result, "x": xf[kept], "y": y[kept], "called": called[kept], "true": (y == truth)[kept],
            "aa": aa, "model": model, "classes": int(model(xf[:1]).shape[1])}


def explain(args) -> int:
    """``--explain``: which AutoAttack components, each alone, break the files the pipeline's report called robust
    (its saved verdicts) that the study's AutoAttack broke."""
    path = Path(args.explain)
    st = load_study(path, args.files)
    result, xk, yk, called, aa, model, classes = (st[k] for k in ("result", "x", "y", "called", "aa", "model",
                                                                     "classes"))
    wrong = (called & aa).nonzero().flatten().tolist()
    norm, eps = result["norm"], result["epsilon"]
    errors = []
    for i in wrong:
        x1, y1 = xk[i:i + 1], yk[i:i + 1]
        with torch.no_grad():
            logits = model(x1)[0]
        others = logits.clone()
        others[y1] = -float("inf")
        ranked = others.argsort(descending=True).tolist()
        entry = {"file": i, "label": int(y1), "report_label_is_true": bool(st["true"][i]),
                 "margin": float(logits[y1] - others.max()), "components": {},
                 "study_parts_breaking": [k for k, v in result["per_file"].items()
                                          if not k.startswith("aa") and v[i] == "1"]}
        for name in STANDARD:
            adv = AutoAttack(model, norm, eps, num_classes=classes, components=(name,)).run(x1, y1)
            with torch.no_grad():
                to = int(model(adv).argmax(1))
            entry["components"][name] = None if to == int(y1) else {"class": to, "rank": ranked.index(to) + 1}
        errors.append(entry)
        print(f"file {i}: label {entry['label']}{'' if entry['report_label_is_true'] else ' (not the true one)'}, "
              f"margin {entry['margin']:.3f}, broken by "
              + (", ".join(f"{k} (to rank {v['rank']})" for k, v in entry["components"].items() if v) or "none alone"),
              flush=True)
    result["errors"] = errors
    path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def part_margins(model, norm: str, eps: float, geometry, x: torch.Tensor, y: torch.Tensor, classes: int) -> dict:
    """Per part of the product's check (PGD-20, APGD-CE @100, APGD-T toward each runner-up class at
    :data:`APGD_T_STEPS`), each run alone on all of ``x``: the margin at the point it ends on (its best)."""
    import torchattacks

    out = {"pgd-20x1": margin_of(model, pgd(model, x, y, geometry, eps, steps=20, restarts=1), y)}
    ce = torchattacks.APGD(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, loss="ce", steps=100,
                           n_restarts=1, seed=0)
    out["apgd-ce@100"] = margin_of(model, ce(x, y), y)
    torch.random.manual_seed(0)
    for rank, steps in enumerate(APGD_T_STEPS[:classes - 1], start=1):
        out[f"apgd-t{rank}@{steps}"] = apgd_single(model, x, y, norm, eps, classes, steps, rank)[1]
    return out


def margins(args) -> int:
    """``--margins``: the product's check with a margin, scored against a previous study's AutoAttack verdicts."""
    path = Path(args.margins)
    st = load_study(path, args.files)
    result, xk, yk, called, aa, model, classes = (st[k] for k in ("result", "x", "y", "called", "aa", "model",
                                                                     "classes"))
    threat = ThreatModel(result["norm"], result["epsilon"])
    torch.manual_seed(0)
    t0 = time.time()
    parts: dict = {}
    for i in range(0, len(yk), args.batch):
        for k, v in part_margins(model, threat.norm, threat.epsilon, threat.geometry, xk[i:i + args.batch],
                                  yk[i:i + args.batch], classes).items():
            parts.setdefault(k, []).append(v)
        print(f"margins of {min(i + args.batch, len(yk))}/{len(yk)} files ({time.time() - t0:.0f} s)", flush=True)
    worst = torch.stack([torch.cat(v) for v in parts.values()]).min(0).values
    verdicts = {k: torch.tensor([c == "1" for c in v]) for k, v in result["per_file"].items()}
    any_aa = torch.stack([v for k, v in verdicts.items() if k.startswith("aa")]).any(0)  # every AutoAttack run here

    true = st["true"]  # the trust goal counts files whose label is the true one

    def row(name, robust, passes=None):
        return {"check": name, "verified": int(robust.sum()) / result["n"], "broken_by_aa": int((robust & aa).sum()),
                "error": int((robust & aa).sum()) / max(1, int(robust.sum())),
                "broken_by_any_aa": int((robust & any_aa).sum()), "missed": int((~robust & ~aa).sum()),
                "true_label": int((robust & true).sum()),
                "true_label_broken_by_any_aa": int((robust & true & any_aa).sum()),
                "passes": passes}

    rows = [row(f"the check's parts alone, margin > {tau}", worst > tau)
            for tau in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)]
    rows.append(row("the pipeline's own verdicts", called))
    # A second opinion: the files the pipeline called robust whose margin came close get the check once more (this
    # study's run of the check's parts: other random draws); they stay robust only if it agrees.
    iters = sorted({int(k.split("@")[1]) for k in verdicts if "@" in k})
    current = [p for name, p in candidates_for(classes, iters).items() if name.endswith("(current)")]
    if current:
        for tau in (0.05, 0.1, 0.2):
            again = called & (worst < tau)
            alive, cost = again.clone(), 0
            for key, per_file in current[0]:
                cost += per_file * int(alive.sum())
                alive &= ~verdicts[key]
            rows.append(row(f"the pipeline's verdicts, the check once more where margin < {tau} "
                            f"({int(again.sum())} files)", called & ~(again & ~alive), cost / result["n"]))
    result["margin_rows"] = rows
    result["margins"] = {"worst": [round(float(m), 4) for m in worst],
                         "errors_of_the_pipeline": [round(float(worst[i]), 4)
                                                    for i in (called & aa).nonzero().flatten()]}
    path.write_text(json.dumps(result, indent=2) + "\n")
    emit({"rows": rows}, ["check", "verified", "broken_by_aa", "error", "broken_by_any_aa", "missed", "true_label",
                          "true_label_broken_by_any_aa", "passes"], None, args.markdown)
    return 0


def rerun_aa(args) -> int:
    """``--aa-again``: full AutoAttack once more, from another seed, on the files the pipeline called robust; the
    verdicts join the study's JSON as ``per_file["aa_seed{S}"]`` (files not called robust: 0, not attacked)."""
    path = Path(args.aa_again)
    st = load_study(path, args.files)
    result, xk, yk, called, first, model, classes = (st[k] for k in ("result", "x", "y", "called", "aa", "model",
                                                                        "classes"))
    aa = AutoAttack(model, result["norm"], result["epsilon"], num_classes=classes, seed=args.aa_seed)
    idx = called.nonzero().flatten()
    broken = torch.zeros(len(yk), dtype=torch.bool)
    t0 = time.time()
    for i in range(0, len(idx), args.batch):
        j = idx[i:i + args.batch]
        with torch.no_grad():
            broken[j] = model(aa.run(xk[j], yk[j])).argmax(1) != yk[j]
        print(f"AutoAttack (seed {args.aa_seed}) on {min(i + args.batch, len(idx))}/{len(idx)} called robust "
              f"({time.time() - t0:.0f} s)", flush=True)
    result["per_file"][f"aa_seed{args.aa_seed}"] = "".join("1" if b else "0" for b in broken.tolist())
    print(f"of {len(idx)} files called robust: AutoAttack seed 0 breaks {int((first & called).sum())}, seed "
          f"{args.aa_seed} breaks {int(broken.sum())}, both {int((first & broken).sum())}, either "
          f"{int(((first & called) | broken).sum())}")
    path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


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
    ap.add_argument("--explain", metavar="JSON", help="with --files: for each file the pipeline's report called robust "
                    "that AutoAttack broke in a previous run of this study on the same files (its --json), "
                    "run each AutoAttack component alone and record which break it, its margin and the class it falls "
                    "to; added to that JSON as 'errors'")
    ap.add_argument("--margins", metavar="JSON", help="with --files: run the product's check's parts alone on every "
                    "file, keep the lowest margin (label logit minus the next) any of them ends on, and score 'called "
                    "robust iff that margin > tau' against the AutoAttack verdicts of a previous run of this study on "
                    "the same files (its --json); added to that JSON as 'margin_rows'")
    ap.add_argument("--aa-again", metavar="JSON", help="with --files: run full AutoAttack again from --aa-seed on the "
                    "files the pipeline called robust; added to that JSON's per-file verdicts")
    ap.add_argument("--aa-seed", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    if args.aa_again:
        if not args.files:
            ap.error("--aa-again needs --files (the files its verdicts were measured on)")
        return rerun_aa(args)
    if args.margins:
        if not args.files:
            ap.error("--margins needs --files (the files its verdicts were measured on)")
        return margins(args)
    if args.explain:
        if not args.files:
            ap.error("--explain needs --files (the files its verdicts were measured on)")
        return explain(args)
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
