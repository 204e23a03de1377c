"""How close the report's check came on the files it passed, and which recheck rules would keep its verdicts true.

    python -m bench.recheck --keep DIR [--model M] [--norm N] [--runs 2] [--taus 0,0.02,0.05,0.1] [--json F]
        [--markdown F]

``DIR`` is a ``bench.defaults --keep`` folder whose ``defaults`` row was evaluated with AutoAttack (its
``defaults.pt`` and ``defaults.eval.json``). On the files that row's reports call robust, the product's check
(``protect.check_margins``) runs ``--runs`` more times, each from other random draws (run ``k``: the check with
``seed=k``), keeping each file's lowest margin (the label's logit minus the next,
at the points the check's attacks end on; a file a run rejects counts as margin -1). Each rule below is scored
against that row's own AutoAttack verdicts (true label; ``--against pgd``: its PGD-20's):

- ``run 0 > tau``: the file passes only with a margin above tau (a margin floor);
- ``every run > tau``: all runs must clear tau;
- ``run 0 > tau, or run 0 > 0 and run 1 > tau``: the product's recheck (``verify_robust(recheck_below=tau)``): a
  close call gets the check once more and must clear tau there.

``broken``: files called robust, with the true label, that the row's full AutoAttack (or ``--against``) broke.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench import emit, kept_row
from preempt.core.data import fashion_mnist
from preempt.core.protect import check_margins
from preempt.core.threat import ThreatModel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", required=True, help="a bench.defaults --keep folder with an evaluated defaults row")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--taus", default="0,0.02,0.05,0.1")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--against", default="aa", help="the row's attack whose per-file verdicts score the rules "
                    "(default aa: full AutoAttack)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    keep = Path(args.keep)
    made, evaluation = kept_row(ap, args.keep, args.against)
    stamp = made["stamp"]
    if made["verified"] is None:
        ap.error("that defaults row ran without a check")
    from preempt.core.models import load_classifier

    model = load_classifier(stamp["model"]).model
    threat = ThreatModel(**stamp["threat"])
    y = fashion_mnist("test", limit=stamp["n"])[1]
    labels, idx = made["labels"], made["verified"].nonzero().flatten()
    robust_aa = torch.tensor([c == "1" for c in evaluation["robust_per_file"][args.against]])
    true = labels[idx] == y[idx]
    broken = true & ~robust_aa[idx]
    margins = []
    t0 = time.time()
    for k in range(args.runs):
        parts = []
        for i in range(0, len(idx), args.batch):
            j = idx[i:i + args.batch]
            r, m = check_margins(model, made["x"][j], labels[j], threat, seed=k)
            parts.append(torch.where(r, m, torch.full_like(m, -1.0)))
        margins.append(torch.cat(parts))
        print(f"run {k}: passes {int((margins[-1] > 0).sum())} of {len(idx)} ({time.time() - t0:.0f} s)", flush=True)

    def row(rule: str, keep_mask: torch.Tensor) -> dict:
        return {"rule": rule, "verified": int(keep_mask.sum()), "true_label": int((keep_mask & true).sum()),
                "broken": int((keep_mask & broken).sum()),
                "error": round(int((keep_mask & broken).sum()) / max(1, int((keep_mask & true).sum())), 4)}

    rows = [row("the reports' verdicts", torch.ones_like(true))]
    m0 = margins[0]
    for tau in (float(t) for t in args.taus.split(",")):
        rows.append(row(f"run 0 > {tau}", m0 > tau))
        if len(margins) > 1:
            rows.append(row(f"every run > {tau}", torch.stack(margins).min(0).values > tau))
            rows.append(row(f"run 0 > {tau}, or run 0 > 0 and run 1 > {tau}", (m0 > tau) | ((m0 > 0) & (margins[1] > tau))))
    result = {"keep": str(keep), "stamp": stamp, "against": args.against, "verified": len(idx), "rows": rows,
              "broken_files": {"index": idx[broken].tolist(),
                               "margins": [[round(float(m[i]), 4) for m in margins] for i in broken.nonzero().flatten()]}}
    print("margins of the files AutoAttack broke, per run:", result["broken_files"]["margins"])
    emit(result, ["rule", "verified", "true_label", "broken", "error"], args.json, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
