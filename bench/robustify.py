"""Robustification benchmark: a plain Algorithm 1 against Preempt's robustifier, same run, same images.

    python -m bench.robustify [-n 200] [--model fmnist-linf-adv] [--attacks pgd,aa] [--json F] [--markdown F]

(a) ``plain``: the paper's loop written the straightforward way: per batch, one random start,
    every image runs all MAXITER = 100 outer iterations of T = 20 inner PGD steps, fp32, weights
    in the default NCHW layout; the official code's tanh-box reparameterisation with RMSprop (lr 0.1).
(b) ``preempt``: :func:`preempt.core.robustify.robustify` at its defaults (same MAXITER, T, N,
    optimiser), with the switches it turns on by default: channels_last weights and early stopping.
(c) ``preempt-no-plateau``: (b) with only the ln 2 stopping rule (no plateau rule);
(d) ``preempt-no-stop``: (b) with early stopping off, to separate what each switch buys.

Reports images per second, forward-backward passes per image and grey-box accuracy (PGD-20 and
AutoAttack, standard version) of the originals and of each output, with the gap closure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from preempt.core.data import fashion_mnist
from preempt.core.evaluate import attack_fn, gap_closure
from preempt.core.models import load_classifier
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel


def plain_robustify(model, x_o, y, eps: float, delta: float, iterations: int = 100, steps: int = 20,
                    lr: float = 0.1):
    """Algorithm 1 as a straightforward loop (the reference the benchmark compares against)."""
    lo, hi = (x_o - delta).clamp(min=0), (x_o + delta).clamp(max=1)
    w = torch.atanh(((x_o - lo) / (hi - lo).clamp(min=1e-12) * 2 - 1).clamp(-0.9995, 0.9995)).requires_grad_(True)
    opt = torch.optim.RMSprop([w], lr=lr)
    alpha = eps / 4
    for _ in range(iterations):
        x = lo + (torch.tanh(w) + 1) / 2 * (hi - lo)
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            xa = x_adv.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
            x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        opt.zero_grad()
        F.cross_entropy(model(x_adv), y, reduction="sum").backward()
        opt.step()
    return (lo + (torch.tanh(w) + 1) / 2 * (hi - lo)).detach()


def robust_accuracy(model, x, y, threat, attacks, batch: int) -> dict:
    out = {}
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    out["clean"] = float(correct.float().mean())
    for name in attacks:
        atk = attack_fn(name, model, threat)
        ok = torch.cat([model(atk(x[i:i + batch], y[i:i + batch], threat.epsilon)).argmax(1) == y[i:i + batch]
                        for i in range(0, len(x), batch)])
        out[f"greybox_{name}"] = float((ok & correct).float().mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--model", default="fmnist-linf-adv")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--attacks", default="pgd,aa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    threat = ThreatModel("linf", args.epsilon)
    x, y = fashion_mnist("test", limit=args.n)
    fast = load_classifier(args.model).model  # channels_last (Preempt's default)
    nchw = load_classifier(args.model, channels_last=False).model
    with torch.no_grad():
        labels = fast(x).argmax(1)

    runs = {}

    def timed(name, fn):
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        outs, passes = [], []
        for i in range(0, len(x), args.batch):
            xr, p = fn(x[i:i + args.batch], labels[i:i + args.batch])
            outs.append(xr)
            passes.append(p * len(xr))
        sec = time.perf_counter() - t
        runs[name] = {"x": torch.cat(outs), "seconds": sec, "images_per_s": len(x) / sec,
                      "passes_per_image": sum(passes) / len(x)}
        print(f"{name}: {len(x) / sec:.3f} images/s, {sum(passes) / len(x):.0f} passes/image", flush=True)

    timed("plain", lambda xb, yb: (plain_robustify(nchw, xb, yb, args.epsilon, args.epsilon), 2100))

    def ours(cfg):
        def run(xb, yb):
            r = robustify(fast, xb, threat, cfg, y=yb)
            return r.x_rob, r.passes
        return run

    timed("preempt", ours(RobustifyConfig()))
    timed("preempt-no-plateau", ours(RobustifyConfig(plateau_window=0)))
    timed("preempt-no-stop", ours(RobustifyConfig(stop_patience=0, plateau_window=0)))

    rows = [{"method": "none", **robust_accuracy(fast, x, y, threat, attacks, args.batch)}]
    for name, r in runs.items():
        acc = robust_accuracy(fast, r["x"], y, threat, attacks, args.batch)
        rows.append({"method": name, "images_per_s": round(r["images_per_s"], 4),
                     "seconds_per_image": round(r["seconds"] / len(x), 4),
                     "passes_per_image": round(r["passes_per_image"], 1), **acc})
        print(rows[-1], flush=True)
    for r in rows[1:]:
        r["speedup_vs_plain"] = round(r["images_per_s"] / rows[1]["images_per_s"], 2)
        for a in attacks:
            r[f"gap_closure_{a}"] = gap_closure(rows[0], r, f"greybox_{a}")
    result = {"n_images": len(x), "model": args.model, "epsilon": args.epsilon, "delta": args.epsilon,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows}
    cols = ["method", "images_per_s", "speedup_vs_plain", "passes_per_image", "clean"] + \
           [f"greybox_{a}" for a in attacks] + [f"gap_closure_{a}" for a in attacks]
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        md += "| " + " | ".join("-" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                                for c in cols) + " |\n"
    print(md)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
