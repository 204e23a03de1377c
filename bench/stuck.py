"""Which images does robustification leave attackable, and could any setting protect them?

    python -m bench.stuck [-n 200] [--start 0] [--norm linf|l2] [--model M] [--select pgd|aa]
                          [--deltas 0.1,0.15,0.2] [--efforts paper-full,...] [--json F]

Robustifies n Fashion-MNIST test images at the defaults, keeps the correctly classified images an
attack still breaks afterwards (``--select pgd``: PGD-20 with 5 restarts; ``aa``: AutoAttack, standard
version, the issue's criterion), and for each prints the classifier's two most likely classes on the
original and the robustifier's final robust loss. Then it robustifies those images again with much more
effort at the same delta (the efforts of :data:`EFFORT`: the paper's full loop without early stopping,
the margin outer loss, targeted inner attacks toward every other class with the worst start driving
the update, 8 random starts and 300 iterations; ``anneal``: a continuation that robustifies at 1.5 delta
and then shrinks the ball to delta in steps, each search warm-started at the last one's point) and at
larger deltas, and reports for each run which
images pass the protection report's checks, PGD-20 x 5 (``pgd``) and PGD then APGD-CE and APGD-T
(``apgd``), and with ``--select aa`` AutoAttack itself (``aa``).

If more effort at delta does not help and a larger delta does, the limit is the threat (no robust
point within delta), not the search. With ``--select aa`` it also prints the **ceiling**: the AutoAttack
gap closure the defaults would reach if every image that any effort at delta made AutoAttack-robust
were protected, i.e. the most any robustifier found by these searches could give for this model.

``--images 17,26,...`` skips the selection and robustifies those test images (the correctly classified
ones) again: a cheap rerun on the images an earlier ``--select aa`` run left (its JSON lists them).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import emit, robust_accuracy, variants
from bench.variants import FULL_LOOP, RETRY_CONFIGS
from preempt.core.data import fashion_mnist
from preempt.core.evaluate import gap_closure
from preempt.core.images import quantize_within_budget
from preempt.core.models import load_classifier
from preempt.core.protect import verify_robust
from preempt.registry import DEFAULT_MODEL
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel

EFFORT = {
    "paper-full": RETRY_CONFIGS["paper-full"],
    "cw-outer-full": {"outer_loss": "cw", **FULL_LOOP},
    "targeted9-max-full": RETRY_CONFIGS["targeted9-max-full"],
    "n8-300it-full": {"samples": 8, "iterations": 300, **FULL_LOOP},
}
# Continuation: robustify at delta * ANNEAL[0] with the full loop, then at each smaller factor for
# ANNEAL_STAGE iterations, warm-started at the previous point (projected into the smaller ball), the
# last stage (factor 1) with the full loop again: a path to a robust point that starts outside B_delta.
ANNEAL = (1.5, 1.4, 1.3, 1.2, 1.1, 1.0)
ANNEAL_STAGE = 20
EFFORTS = sorted(EFFORT) + ["anneal"]
DEFAULTS = {  # norm -> (model, epsilon, deltas)
    "linf": (DEFAULT_MODEL, 0.1, "0.1,0.15,0.2"),
    "l2": ("fmnist-l2-ours-8ep", 1.5, "1.5,2.0,2.5"),
}


def aa_survives(model, x, label, threat: ThreatModel, batch: int) -> torch.Tensor:
    """Per image: classified ``label`` and AutoAttack (standard) finds no example inside ``B_eps``."""
    masks = {}
    robust_accuracy(model, x, label, threat, ["aa"], batch, masks=masks)
    return masks["aa"]


def anneal(model, x, label, norm: str, eps: float, delta: float):
    """The ``anneal`` effort: (the last stage's :class:`RobustifyResult`, passes per image over every stage)."""
    point, passes = None, 0.0
    for k, factor in enumerate(ANNEAL):
        whole = k in (0, len(ANNEAL) - 1)  # the first and the last stage run the whole loop
        cfg = RobustifyConfig(**FULL_LOOP) if whole else RobustifyConfig(iterations=ANNEAL_STAGE, **FULL_LOOP)
        r = robustify(model, x, ThreatModel(norm, eps, delta * factor), cfg, y=label, x_init=point)
        point, passes = r.x_rob, passes + r.passes
    return r, passes


def closure(summary: dict, robust: int):
    """AutoAttack gap closure, rounded, of ``robust`` robust outputs against the summary's originals."""
    g = gap_closure({"clean": summary["clean"], "aa": summary["aa_originals"]}, {"aa": robust}, "aa")
    return None if g is None else round(g, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--start", type=int, default=0, help="first test image")
    ap.add_argument("--norm", choices=sorted(DEFAULTS), default="linf")
    ap.add_argument("--model", default=None, help="default: the default model of the norm")
    ap.add_argument("--epsilon", type=float, default=None)
    ap.add_argument("--deltas", default=None, help="delta of each effort run; the effort variants run at the first")
    ap.add_argument("--select", choices=("pgd", "aa"), default="pgd",
                    help="the attack that picks the images still broken after robustification at the defaults")
    ap.add_argument("--efforts", default="paper-full,cw-outer-full,n8-300it-full",
                    help=f"from {EFFORTS}")
    ap.add_argument("--images", default=None,
                    help="comma-separated test image indices to robustify again (skips the selection)")
    ap.add_argument("--batch", type=int, default=250, help="images per AutoAttack batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    model_name, eps0, deltas0 = DEFAULTS[args.norm]
    model_name = args.model or model_name
    eps = args.epsilon if args.epsilon is not None else eps0
    deltas = [float(d) for d in (args.deltas or deltas0).split(",") if d]
    efforts = [e for e in args.efforts.split(",") if e]
    if set(efforts) - set(EFFORTS):
        ap.error(f"unknown efforts {sorted(set(efforts) - set(EFFORTS))}; choose from {EFFORTS}")
    picked = [int(i) for i in args.images.split(",") if i] if args.images else None
    if picked is not None:
        x, y = fashion_mnist("test", limit=max(picked) + 1)
        x, y = x[picked], y[picked]
    else:
        x, y = fashion_mnist("test", limit=args.start + args.n)
        x, y = x[args.start:], y[args.start:]
    index = picked if picked is not None else list(range(args.start, args.start + len(x)))
    model = load_classifier(model_name).model
    threat = ThreatModel(args.norm, eps, deltas[0])
    with torch.no_grad():
        label = model(x).argmax(1)
    correct = label == y
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    r = robustify(model, x, threat, RobustifyConfig(), y=label)
    xq = quantize_within_budget(r.x_rob, x, args.norm, threat.delta)
    print(f"robustified {len(x)} images at the defaults: {r.passes:.0f} passes per image, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    summary = {"clean": int(correct.sum())}
    checks = ["pgd", "apgd"]
    torch.manual_seed(args.seed)
    if picked is not None:
        kept = torch.zeros_like(correct)  # every picked image that is correctly classified runs again
        if args.select == "aa":
            checks.append("aa")
    elif args.select == "pgd":
        kept = verify_robust(model, xq, label, threat, "pgd")
    else:
        checks.append("aa")
        t0 = time.perf_counter()
        idx = correct.nonzero().flatten()
        orig = torch.zeros_like(correct)
        orig[idx] = aa_survives(model, x[idx], label[idx], threat, args.batch)
        kept = torch.zeros_like(correct)
        kept[idx] = aa_survives(model, xq[idx], label[idx], threat, args.batch)
        summary.update(aa_originals=int(orig.sum()), aa_robustified=int((correct & kept).sum()),
                       aa_seconds=round(time.perf_counter() - t0, 1))
        summary["gap_closure_aa"] = closure(summary, summary["aa_robustified"])
    stuck = (correct & ~kept).nonzero().flatten()
    with torch.no_grad():
        top = torch.softmax(model(x[stuck]), 1).topk(2, 1)
    which = ("picked (--images)" if picked is not None else
             f"still broken by {'PGD-20 x 5' if args.select == 'pgd' else 'AutoAttack'} after robustification at the defaults")
    print(f"{int(correct.sum())} of {len(x)} correctly classified; {stuck.numel()} {which}; {summary}", flush=True)
    images = [{"index": index[int(i)], "label": int(label[i]), "p_label": round(float(top.values[k, 0]), 3),
               "runner_up": int(top.indices[k, 1]), "p_runner_up": round(float(top.values[k, 1]), 3),
               "robust_loss": round(float(r.robust_loss[i]), 3)} for k, i in enumerate(stuck.tolist())]
    runs = [(name, deltas[0], EFFORT.get(name)) for name in efforts] + [("paper-full", d, EFFORT["paper-full"]) for d in deltas[1:]]
    rows, recovered = [], set()
    for name, delta, cfg in runs:
        if stuck.numel() == 0:
            break
        t = ThreatModel(args.norm, eps, delta)
        torch.manual_seed(args.seed + 1)
        t0 = time.perf_counter()
        if cfg is None:  # anneal
            rr, passes = anneal(model, x[stuck], label[stuck], args.norm, eps, delta)
        else:
            rr = variants.run(model, x[stuck], t, cfg, y=label[stuck])
            passes = rr.passes
        out = quantize_within_budget(rr.x_rob, x[stuck], args.norm, delta)
        row = {"run": name, "delta": delta, "passes_per_image": round(passes, 1),
               "seconds": round(time.perf_counter() - t0, 1)}
        for check in checks:
            torch.manual_seed(args.seed)
            if check == "aa":
                ok = aa_survives(model, out, label[stuck], t, args.batch)
                if delta == deltas[0]:
                    recovered |= {index[int(i)] for i in stuck[ok].tolist()}
            else:
                ok = verify_robust(model, out, label[stuck], t, check)
            row[f"robust_{check}"] = int(ok.sum())
            row[f"robust_{check}_images"] = [index[int(i)] for i in stuck[ok].tolist()]
        row["robust_loss"] = [round(float(v), 3) for v in rr.robust_loss]
        rows.append(row)
        print(row, flush=True)
    if args.select == "aa" and picked is None:
        summary["recovered_at_delta"] = sorted(recovered)
        summary["ceiling_gap_closure_aa"] = closure(summary, summary["aa_robustified"] + len(recovered))
        print(f"ceiling: {len(recovered)} of the {stuck.numel()} images AutoAttack breaks at the defaults were made "
              f"AutoAttack-robust by some effort at delta = {deltas[0]}; gap closure {summary['gap_closure_aa']} at the "
              f"defaults, at most {summary['ceiling_gap_closure_aa']} with every effort's best", flush=True)
    result = {"model": model_name, "norm": args.norm, "start": args.start, "n_images": len(x), "epsilon": eps,
              "images": picked,
              "select": args.select, "correct": int(correct.sum()), "summary": summary, "stuck": images, "rows": rows}
    for im in images:
        print(im)
    emit(result, ["run", "delta", "passes_per_image", "seconds"] + [f"robust_{c}" for c in checks], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
