"""The product's defaults against the paper's loop: protection, speed and the report's trust, one run.

    python -m bench.defaults [-n 1000] [--model fmnist-linf-ours-12ep] [--norm linf] [--attacks pgd,aa]
        [--rows paper-loop,defaults] [--json F] [--markdown F] [--keep DIR] [--set FIELD=VALUE]

The same first ``n`` Fashion-MNIST test images, the same model, on this machine:

- ``paper-loop``: Algorithm 1 as the official code runs it (100 outer iterations, T = 20, N = 1, a random start
  in the delta ball, no early stopping), rounded to 8 bits inside the budget; nothing verified. Timed: the
  robustification alone.
- ``defaults``: the product's pipeline at the defaults of a request that names only the model
  (``RobustifyRequest.resolve`` then ``pipeline.protect``: robustify, the strength's scale, PNG written and
  decoded, the report's check, the continuation of the images it rejects). Timed: all of it.

Each row: images per second and its ratio to ``paper-loop``; the classifier passes per image of each part
(``robustify``: the robustifier's own; ``scale``: choosing the strength's scale; ``check``: the report's check;
a pass is one image through the classifier, forward and input gradient, or forward alone); clean and grey-box
accuracy (PGD-20; AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square 5000) and gap closure against the
originals; with a check, the share of images the report calls robust and ``trust_error``: the share of those
that full AutoAttack breaks.

``--keep DIR`` saves each row's files (and its timing) to ``DIR/<row>.pt`` as soon as they are made, and a
later run with the same ``--keep``, ``-n``, model and seed takes them from there instead of making them again:
an evaluation that stops (AutoAttack on 1000 robust files takes most of an hour on two cores) resumes without
re-timing. Each row's evaluation (and the originals') is kept there too (``DIR/<row>.eval.json``, with the
attacks it ran), and is reused only for the same files: ``--retime`` makes and times every row again and
evaluates only the rows whose files came out different (the paper loop's are the same bit for bit, it is seeded),
e.g. after a change to the defaults.

``--set FIELD=VALUE`` (repeatable) changes a field of the defaults row's request as a client would send it
(``--set stop_loss=0.693``: a candidate default measured against the same paper loop); the paper loop's kept files
and evaluation (and the originals') stay valid, the defaults row's are kept apart by the change.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from bench import emit, robust_accuracy
from preempt.core.data import fashion_mnist
from preempt.core.evaluate import gap_closure
from preempt.core.images import DecodedImage, quantize_within_budget
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel
from preempt.registry import DEFAULT_MODEL

PAPER_LOOP = RobustifyConfig(iterations=100, steps=20, samples=1, init="random", stop_patience=0, plateau_window=0)
ROWS = ("paper-loop", "defaults")


class Counted(torch.nn.Module):
    """The classifier, counting the images it sees per part (``part`` set by the caller)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.part, self.counts = model, "other", {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counts[self.part] = self.counts.get(self.part, 0) + x.shape[0]
        return self.model(x)

    @contextmanager
    def counting(self, part: str):
        before, self.part = self.part, part
        try:
            yield
        finally:
            self.part = before


def watch_parts(counted: Counted) -> None:
    """Count the passes of the strength's scale and of the report's check apart from the robustifier's."""
    from preempt.core import protect

    def part(fn, name):
        def wrapped(*a, **kw):
            if counted.part != "robustify":  # the check inside the scale's search counts as the scale
                return fn(*a, **kw)
            with counted.counting(name):
                return fn(*a, **kw)
        return wrapped

    protect.smallest_scale = part(protect.smallest_scale, "scale")
    protect.verify_through = part(protect.verify_through, "check")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--norm", choices=["linf", "l2"], default=None, help="default: the model card's")
    ap.add_argument("--attacks", default="pgd,aa")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--keep", help="folder for each row's files and timing, reused when it matches this run")
    ap.add_argument("--retime", action="store_true", help="with --keep: make and time every row again")
    ap.add_argument("--recheck-below", type=float, default=None, metavar="MARGIN",
                    help="the report's check runs once more on the images it passes with a margin below this "
                         "(verify_robust's recheck_below; default the product's RECHECK_MARGIN)")
    ap.add_argument("--decide-above", type=float, default=None, metavar="MARGIN",
                    help="the check's APGD-T at 25 iterations toward every runner-up class, then 100 toward the three "
                         "most likely only on images whose margin is under this (check_margins' decide_above; "
                         "default the product's DECIDED_MARGIN)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a request field for the defaults row, as a client would send it (e.g. stop_loss=0.693); "
                         "repeatable")
    args = ap.parse_args(argv)
    from preempt import pipeline
    from preempt.request import RequestError, RobustifyRequest

    rows_wanted = [r for r in args.rows.split(",") if r]
    if set(rows_wanted) - set(ROWS):
        ap.error(f"unknown rows {sorted(set(rows_wanted) - set(ROWS))}; choose from {list(ROWS)}")
    attacks = [a for a in args.attacks.split(",") if a]
    changed = dict(kv.split("=", 1) for kv in args.set if "=" in kv)
    if len(changed) != len(args.set):
        ap.error(f"--set takes FIELD=VALUE, got {args.set}")
    from preempt.core import protect

    if args.recheck_below is not None:
        protect.RECHECK_MARGIN = args.recheck_below
    if args.decide_above is not None:
        protect.DECIDED_MARGIN = args.decide_above
    protector = pipeline.load_protector(args.model)
    try:
        request = RobustifyRequest.resolve(protector.judge.card, args.model, norm=args.norm, **changed)
    except RequestError as e:
        ap.error(str(e))
    threat = ThreatModel(**request.threat_fields())
    counted = Counted(protector.judge.model)
    protector.judge.model = protector.fast.model = counted
    model = protector.judge.model
    watch_parts(counted)
    x, y = fashion_mnist("test", limit=args.n)[:2]
    # every row's files first, so that nothing else runs while timed: (row, files, verified, labels, kept path)
    made = []
    base_rate = None
    base_stamp = {"n": args.n, "model": args.model, "seed": args.seed, "threat": request.threat_fields()}

    def stamp_of(row: str) -> dict:
        """What a row's files depend on: only the defaults' on the request's changed fields (not the originals'
        or the paper loop's)."""
        if row != "defaults":
            return base_stamp
        own = {"set": changed} if changed else {}
        if protect.RECHECK_MARGIN:
            own["recheck_below"] = protect.RECHECK_MARGIN
        if protect.DECIDED_MARGIN is not None:
            own["decide_above"] = protect.DECIDED_MARGIN
        return {**base_stamp, **own}

    def eval_stamp(row: str) -> dict:
        return {**stamp_of(row), "attacks": attacks}  # an evaluation also depends on the attacks it ran

    for name in rows_wanted:
        stamp = stamp_of(name)
        kept = Path(args.keep, f"{name}.pt") if args.keep else None
        saved = torch.load(kept, weights_only=False) if kept is not None and kept.exists() else None
        if saved is not None and saved["stamp"] == stamp and not args.retime:
            print(f"{name}: files and timing from {kept}", flush=True)
            base_rate = saved["row"]["images_per_s"] if name == "paper-loop" else base_rate
            made.append((saved["row"], saved["x"], saved["verified"], saved["labels"], kept))
            continue
        torch.manual_seed(args.seed)
        counted.counts = {}
        t0 = time.perf_counter()
        verified = labels = None
        extra = {}  # the defaults' own columns
        if name == "paper-loop":
            outs = []
            with counted.counting("robustify"):
                for i in range(0, len(x), args.batch):
                    r = robustify(model, x[i:i + args.batch], threat, PAPER_LOOP)
                    outs.append(quantize_within_budget(r.x_rob, x[i:i + args.batch], threat.norm, threat.delta))
            xr = torch.cat(outs)
        else:
            results = []
            with counted.counting("robustify"):
                for i in range(0, len(x), args.batch):
                    imgs = [DecodedImage(pixels=xi, alpha=None, format="png") for xi in x[i:i + args.batch]]
                    results += pipeline.protect(request, protector, imgs)
            xr = torch.stack([r.pixels for r in results])
            labels = torch.tensor([r.report["label"] for r in results])
            if request.verify != "off":
                verified = torch.tensor([r.report["verified"]["robust"] for r in results])
            extra["continued"] = sum(r.report.get("continued", False) for r in results)
        sec = time.perf_counter() - t0
        counts = {part: round(c / len(x), 1) for part, c in counted.counts.items()}
        row = {"row": name, "images_per_s": round(len(x) / sec, 3), "passes": round(sum(counts.values()), 1),
               **{f"passes_{p}": c for p, c in counts.items()}, **extra}
        base_rate = row["images_per_s"] if name == "paper-loop" else base_rate
        if base_rate:
            row["vs_paper_loop"] = round(row["images_per_s"] / base_rate, 2)
        print(row, flush=True)
        made.append((row, xr, verified, labels, kept))
        same = (saved is not None and saved["stamp"] == stamp and torch.equal(saved["x"], xr)
                and (saved["verified"] is None) == (verified is None)
                and (verified is None or torch.equal(saved["verified"], verified)))
        if kept is not None and not same:
            kept.with_suffix(".eval.json").unlink(missing_ok=True)  # other files: their evaluation is void
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"stamp": stamp, "row": row, "x": xr, "verified": verified, "labels": labels}, kept)
    def evaluated(path, name: str) -> dict | None:
        """A row's evaluation kept by an earlier run with the same files and attacks."""
        if path is None or not path.exists():
            return None
        saved = json.loads(path.read_text())
        return saved["row"] if saved["stamp"] == eval_stamp(name) else None

    def keep_eval(path, row, name: str, masks: dict | None = None) -> None:
        """Keep a row's evaluation and, per attack, which files it left robust (one character per file, 1 =
        robust against the true label), so that a later study can compare its own attack runs file by file."""
        if path is not None:
            per_file = {a: "".join("1" if b else "0" for b in m.tolist()) for a, m in (masks or {}).items()}
            path.write_text(json.dumps({"stamp": eval_stamp(name), "row": row, "robust_per_file": per_file}) + "\n")

    orig_path = Path(args.keep, "originals.eval.json") if args.keep else None
    rows = [evaluated(orig_path, "originals")]
    if rows[0] is None:
        torch.manual_seed(args.seed)
        rows = [{"row": "originals", **robust_accuracy(model, x, y, threat, attacks, args.batch)}]
        keep_eval(orig_path, rows[0], "originals")
    print(rows[-1], flush=True)
    cols = ["row", "images_per_s", "vs_paper_loop", "passes", "passes_robustify", "passes_scale", "passes_check",
            "continued", "clean"] + [f"greybox_{a}" for a in attacks] + [f"gap_closure_{a}" for a in attacks] + \
        ["verified", "verified_broken_by_aa", "trust_error"]
    result = {"n_images": len(x), "model": args.model, "threat": request.threat_fields(), "set": changed,
              "recheck_below": protect.RECHECK_MARGIN, "decide_above": protect.DECIDED_MARGIN,
              "request": request.model_dump(), "threads": torch.get_num_threads(), "rows": rows}
    for row, xr, verified, labels, kept in made:
        eval_path = kept.with_suffix(".eval.json") if kept is not None else None
        done = evaluated(eval_path, row["row"])
        if done is not None:  # the accuracies of these very files, this run's timing
            rows.append({**done, **row})
            print(f"{done['row']}: evaluation from {eval_path}", flush=True)
        else:
            torch.manual_seed(args.seed)
            masks = {}
            row.update(robust_accuracy(model, xr, y, threat, attacks, args.batch, masks=masks))
            for a in attacks:
                row[f"gap_closure_{a}"] = gap_closure(rows[0], row, f"greybox_{a}")
            if verified is not None:
                row["verified"] = float(verified.float().mean())
                if "aa" in masks:
                    # the report speaks of the label it protected (the prediction), AutoAttack's mask of the true
                    # label: an image counts here when it is correctly classified, called robust and broken
                    called = verified & (labels == y)
                    row["verified_broken_by_aa"] = int((called & ~masks["aa"]).sum())
                    row["trust_error"] = round(row["verified_broken_by_aa"] / max(1, int(called.sum())), 4)
            rows.append(row)
            keep_eval(eval_path, row, row["row"], masks)
            print(row, flush=True)
        emit(result, cols, args.json, args.markdown)  # after every row: a long run keeps what it has
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
