"""Robustification benchmark: a plain Algorithm 1 against Preempt's robustifier, same run, same images.

    python -m bench.robustify [-n 200] [--model fmnist-linf-adv] [--attacks pgd,aa] [--json F] [--markdown F]
    python -m bench.robustify --device cuda -n 1000 --methods plain,preempt,preempt-bf16     # on a GPU
    python -m bench.robustify --device cuda --arch resnet50 -n 64 --iterations 3 \
        --methods plain,preempt-no-stop,preempt-bf16-no-stop                                 # timing only

(a) ``plain``: the paper's loop written the straightforward way: per batch, one random start,
    every image runs all MAXITER = 100 outer iterations of T = 20 inner PGD steps, fp32, weights
    in the default NCHW layout; the official code's tanh-box reparameterisation with RMSprop (lr 0.1).
(b) ``preempt``: :func:`preempt.core.robustify.robustify` at its defaults (same MAXITER, T, N,
    optimiser), with the switches it turns on by default: channels_last weights and early stopping.
(c) ``preempt-no-plateau``: (b) with only the ln 2 stopping rule (no plateau rule);
(d) ``preempt-no-stop``: (b) with early stopping off, to separate what each switch buys;
(e) ``preempt-bf16``, ``preempt-bf16-no-stop``: (b) and (d) with the classifier under bf16 autocast
    (``load_classifier(precision="bf16")``; for GPUs); ``preempt-bf16-compile-no-stop`` also runs
    the classifier through ``torch.compile``. Attacks always use the fp32 model. Every method is
    warmed up on one batch for one iteration before it is timed.

With ``--arch`` the images are uniform noise of the architecture's input shape and the weights
random: the run times the methods (use early-stopping-free methods and few ``--iterations``) and
skips the attacks, whose figures would mean nothing.

Reports images per second, forward-backward passes per image and grey-box accuracy (PGD-20 and
AutoAttack, standard version) of the originals and of each output, with the gap closure.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F

from bench import emit, robust_accuracy
from preempt.core.data import fashion_mnist
from preempt.core.evaluate import gap_closure
from preempt.core.models import Autocast, build_model, load_classifier
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel


INPUT = {"small-cnn": (1, 28, 28), "resnet50": (3, 224, 224)}
METHODS = ("plain", "preempt", "preempt-no-plateau", "preempt-no-stop", "preempt-bf16", "preempt-bf16-no-stop",
           "preempt-bf16-compile-no-stop")


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--model", default="fmnist-linf-adv")
    ap.add_argument("--arch", default=None, help="random-weight architecture on noise images (timing only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--iterations", type=int, default=100, help="MAXITER of every method")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--methods", default="plain,preempt,preempt-no-plateau,preempt-no-stop",
                    help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--attacks", default="pgd,aa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")
    attacks = [a for a in args.attacks.split(",") if a] if not args.arch else []
    threat = ThreatModel("linf", args.epsilon)
    dev = args.device
    if args.arch:
        torch.manual_seed(args.seed)
        nchw = build_model(args.arch, 1000 if args.arch == "resnet50" else 10).to(dev).eval()
        for p in nchw.parameters():
            p.requires_grad_(False)
        fast = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        x = torch.rand((args.n,) + INPUT.get(args.arch, (3, 32, 32)), device=dev)
        y = None
    else:
        x, y = fashion_mnist("test", limit=args.n)
        x, y = x.to(dev), y.to(dev)
        fast = load_classifier(args.model, device=dev).model  # channels_last (Preempt's default)
        nchw = load_classifier(args.model, device=dev, channels_last=False).model
    half = Autocast(fast, torch.bfloat16)
    with torch.no_grad():
        labels = torch.cat([fast(x[i:i + args.batch]).argmax(1) for i in range(0, len(x), args.batch)])
    if y is None:
        y = labels

    runs = {}

    def timed(name, make):
        """Times ``make(iterations)`` over all images, after one untimed 1-iteration warm-up batch
        (cuDNN's algorithm search, torch.compile, lazy CUDA initialisation are not the method's cost)."""
        make(1)(x[:args.batch], labels[:args.batch])
        fn = make(args.iterations)
        torch.manual_seed(args.seed)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs, passes = [], []
        for i in range(0, len(x), args.batch):
            xr, p = fn(x[i:i + args.batch], labels[i:i + args.batch])
            outs.append(xr)
            passes.append(p * len(xr))
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        runs[name] = {"x": torch.cat(outs), "seconds": sec, "images_per_s": len(x) / sec,
                      "passes_per_image": sum(passes) / len(x)}
        print(f"{name}: {len(x) / sec:.3f} images/s, {sum(passes) / len(x):.0f} passes/image", flush=True)

    def ours(model, cfg):
        def run(xb, yb):
            r = robustify(model, xb, threat, cfg, y=yb)
            return r.x_rob, r.passes
        return run

    compiled = {}
    for m in methods:
        if m == "plain":
            timed(m, lambda it: lambda xb, yb: (plain_robustify(nchw, xb, yb, args.epsilon, args.epsilon,
                                                                iterations=it), it * 21))
            continue
        model = half if "bf16" in m else fast
        if "compile" in m:
            model = compiled.setdefault(m, torch.compile(model))
        if m.endswith("no-stop"):
            extra = {"stop_patience": 0, "plateau_window": 0}
        elif m.endswith("no-plateau"):
            extra = {"plateau_window": 0}
        else:
            extra = {}
        timed(m, lambda it, model=model, extra=extra: ours(model, RobustifyConfig(iterations=it, **extra)))

    rows = [{"method": "none", **robust_accuracy(fast, x, y, threat, attacks, args.batch)}]
    for name, r in runs.items():
        acc = robust_accuracy(fast, r["x"], y, threat, attacks, args.batch)
        rows.append({"method": name, "images_per_s": round(r["images_per_s"], 4),
                     "seconds_per_image": round(r["seconds"] / len(x), 4),
                     "passes_per_image": round(r["passes_per_image"], 1), **acc})
        print(rows[-1], flush=True)
    for r in rows[1:]:
        r["speedup_vs_plain"] = round(r["images_per_s"] / runs["plain"]["images_per_s"], 2) if "plain" in runs else None
        for a in attacks:
            r[f"gap_closure_{a}"] = gap_closure(rows[0], r, f"greybox_{a}")
    result = {"n_images": len(x), "model": args.arch or args.model, "device": dev,
              "device_name": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
              "torch": torch.__version__, "iterations": args.iterations, "epsilon": args.epsilon, "delta": args.epsilon,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "rows": rows}
    cols = ["method", "images_per_s", "speedup_vs_plain", "passes_per_image", "clean"] + \
           [f"greybox_{a}" for a in attacks] + [f"gap_closure_{a}" for a in attacks]
    emit(result, cols, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
