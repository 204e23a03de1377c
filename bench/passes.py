"""Forward-backward pass throughput of a classifier: the unit cost of everything Preempt does.

    python -m bench.passes [--model fmnist-linf-adv] [--batch 32,64,128,256,512] [--device cpu]
    python -m bench.passes --arch wrn-34-10 --device cuda --batch 64,128 --variants all   # random weights
    python -m bench.passes --arch resnet50 --device cuda --batch 64 --variants all --peak --json F

A pass is what every PGD step costs: ``grad_x CE(model(x), y)`` with the weights frozen. For each
batch size and each variant it prints milliseconds per image-pass, the seconds per image at 2,100
passes (the paper's 100 x (20 + 1)), the achieved FLOP rate (FLOPs of one pass counted by
``torch.utils.flop_counter``) and, with ``--peak``, that rate as a share of the device's measured
peak. Variants (``--variants``, comma list or ``all``; CUDA-only ones are skipped on a CPU):

* ``nchw``: fp32, weights in the default layout (the plain implementation);
* ``channels_last``: fp32, NHWC weights (Preempt's default on every device);
* ``tf32`` (CUDA): channels_last with TF32 matrix products and convolutions;
* ``bf16``: channels_last under bf16 autocast (``load_classifier(precision="bf16")``);
* ``bf16-compile`` (CUDA): ``bf16`` through ``torch.compile``;
* ``bf16-graph`` (CUDA): ``bf16`` captured once as a CUDA graph and replayed;
* ``bf16-weights``, ``bf16-weights-compile``: weights and activations stored in bf16 (no autocast
  casts), eager and through ``torch.compile``;
* ``-fold`` in a name (``bf16-fold``, ``bf16-fold-compile``): every eval-mode BatchNorm that follows a
  convolution folded into it first (``torch.fx.experimental.optimization.fuse``; the weights are
  frozen during robustification, so the fold is exact up to rounding);
* ``-pad8`` in a name: the first convolution's input (3 colour channels) zero-padded to 8 channels and
  its weights with it (exact: the extra weights are zero), so that the stem's convolution is aligned
  for the tensor cores (bench.layers shows the 3-channel stem as ResNet-50's slowest layer);
* ``-ro`` at the end (``bf16-compile-ro``, ``bf16-fold-compile-ro``): ``torch.compile`` with
  ``mode="reduce-overhead"`` (the compiled forward and backward replayed as CUDA graphs);
* ``-max`` at the end (``bf16-compile-max``, ``bf16-fold-compile-max``): ``torch.compile`` with
  ``mode="max-autotune"`` (Triton templates and cuDNN/cuBLAS choices benchmarked per shape, CUDA graphs).

``--peak`` measures the device's matrix-multiply peak in the same run (an 8192^3 product in fp32,
TF32 and bf16), the ceiling the pass rates are compared with.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

from preempt.core.models import Autocast, build_model, load_classifier

INPUT = {"small-cnn": (1, 28, 28), "resnet50": (3, 224, 224)}
VARIANTS = ("nchw", "channels_last", "tf32", "bf16", "bf16-compile", "bf16-graph", "bf16-weights",
            "bf16-weights-compile", "bf16-fold", "bf16-fold-compile", "bf16-compile-ro", "bf16-fold-compile-ro",
            "bf16-compile-max", "bf16-fold-compile-max", "bf16-pad8", "bf16-pad8-compile", "bf16-pad8-compile-ro")
CUDA_ONLY = {"tf32", "bf16-compile", "bf16-graph", "bf16-weights-compile", "bf16-fold-compile", "bf16-compile-ro",
             "bf16-fold-compile-ro", "bf16-compile-max", "bf16-fold-compile-max", "bf16-pad8-compile",
             "bf16-pad8-compile-ro"}


class BF16Weights(torch.nn.Module):
    """The classifier stored in bf16 (weights and activations), fp32 in and out; no autocast."""

    def __init__(self, model):
        super().__init__()
        self.model = model.to(torch.bfloat16)

    def forward(self, x):
        return self.model(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (eval mode) with each Conv2d -> BatchNorm2d pair folded into one convolution."""
    from torch.fx.experimental.optimization import fuse

    folded = fuse(model.eval(), inplace=False)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.to(memory_format=torch.channels_last)


class PaddedStem(torch.nn.Module):
    """``conv`` applied to its input zero-padded to ``channels`` channels, with zero weights for the new ones."""

    def __init__(self, conv: torch.nn.Conv2d, channels: int):
        super().__init__()
        extra = channels - conv.in_channels
        self.extra = extra
        self.conv = torch.nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                    conv.dilation, conv.groups, conv.bias is not None).to(conv.weight)
        with torch.no_grad():
            self.conv.weight.copy_(F.pad(conv.weight, (0, 0, 0, 0, 0, extra)))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        for p in self.conv.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 0, 0, 0, 0, self.extra)))


def pad_stem(model: torch.nn.Module, channels: int = 8) -> torch.nn.Module:
    """``model`` with its first Conv2d (if it has fewer than ``channels`` input channels) padded to ``channels``."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Conv2d):
                if child.in_channels < channels and child.groups == 1:
                    setattr(parent, name, PaddedStem(child, channels))
                return model
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pass_flops(model, shape, device: str) -> int:
    """FLOPs of one forward + input-gradient pass of one image (weights frozen)."""
    x = torch.rand((1,) + shape, device=device)
    with FlopCounterMode(display=False) as fc:
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(model(xa * 1.0), torch.zeros(1, dtype=torch.long, device=device)).backward()
    return fc.get_total_flops()


def matmul_peak(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 10, tf32: bool = False) -> float:
    """FLOP/s of an n^3 matrix product on random data (the ceiling the passes are compared with)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def make_step(model, x, y, device: str, variant: str):
    """A zero-argument function computing one batch's input gradient in ``variant``."""
    if variant == "bf16-graph":
        static_x = x.clone().requires_grad_(True)

        def body():
            loss = F.cross_entropy(model(static_x), y, reduction="sum")
            return torch.autograd.grad(loss, static_x)[0]

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_grad = body()

        def replay():
            graph.replay()
            return static_grad

        return replay

    graphed = variant.endswith(("-ro", "-max"))  # torch.compile's CUDA graphs: one step per replay

    def one():
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        xa = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        return torch.autograd.grad(loss, xa)[0]

    return one


def time_variant(base, shape, batch: int, device: str, reps: int, variant: str) -> float:
    """Seconds per image-pass of ``variant`` at ``batch``."""
    model = base if variant == "nchw" else copy.deepcopy(base).to(memory_format=torch.channels_last)
    if "-fold" in variant:
        model = fold_batchnorm(model)
    if "-pad8" in variant:
        model = pad_stem(model, 8).to(memory_format=torch.channels_last)
    if variant.startswith("bf16-weights"):
        model = BF16Weights(model)
    elif variant.startswith("bf16"):
        model = Autocast(model, torch.bfloat16)
    if variant.endswith("compile"):
        model = torch.compile(model)
    elif variant.endswith("compile-ro"):
        model = torch.compile(model, mode="reduce-overhead")
    elif variant.endswith("compile-max"):
        model = torch.compile(model, mode="max-autotune")
    x = torch.rand((batch,) + shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    tf32 = variant == "tf32" or variant.startswith("bf16")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        step = make_step(model, x, y, device, variant)
        for _ in range(3):
            step()
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            step()
        sync(device)
        return (time.perf_counter() - t) / reps / batch
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-linf-adv")
    ap.add_argument("--batch", default="32,64,128,256,512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--arch", default=None, help="time a random-weight architecture instead of --model")
    ap.add_argument("--variants", default="nchw,channels_last", help=f"comma list of {', '.join(VARIANTS)}, or all")
    ap.add_argument("--peak", action="store_true", help="measure the device's matrix-multiply peak first")
    ap.add_argument("--json", default=None, help="append the rows (JSON lines) to this file")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark) instead of its heuristic")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if not args.device.startswith("cuda"):
        variants = [v for v in variants if v not in CUDA_ONLY]
    if args.arch:
        base = build_model(args.arch, 1000 if args.arch == "resnet50" else 10).to(args.device).eval()
        for p in base.parameters():
            p.requires_grad_(False)
        shape, name = INPUT.get(args.arch, (3, 32, 32)), args.arch + " (random weights)"
    else:
        loaded = load_classifier(args.model, device=args.device, channels_last=False)
        shape, name = (loaded.spec.channels or 1, *(loaded.spec.input_size or (28, 28))), args.model
        base = loaded.model
    peaks = {}
    if args.peak:
        peaks["fp32"] = matmul_peak(args.device, torch.float32, n=8192 if args.device.startswith("cuda") else 1024)
        if args.device.startswith("cuda"):
            peaks["tf32"] = matmul_peak(args.device, torch.float32, tf32=True)
            peaks["bf16"] = matmul_peak(args.device, torch.bfloat16)
        print("measured matrix-multiply peak: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items()))
    flops = pass_flops(base, shape, args.device)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"model {name}, input {list(shape)}, device {args.device} ({dev}), torch {torch.__version__}, "
          f"{flops / 1e6:.2f} MFLOP per pass" + (", cudnn.benchmark on" if args.cudnn_benchmark else ""))
    print("| batch | variant | ms/pass | GFLOP/s | share of peak | s/image at 2100 passes | vs nchw |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for b in (int(v) for v in args.batch.split(",")):
        ref = None
        for v in variants:
            try:
                sec = time_variant(base, shape, b, args.device, args.reps, v)
            except Exception as e:  # noqa: BLE001 - a variant the platform cannot run is reported, not fatal
                print(f"| {b} | {v} | failed: {type(e).__name__}: {str(e)[:200]} |", flush=True)
                rows.append({"arch": args.arch or args.model, "batch": b, "variant": v, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            ref = sec if v == "nchw" else ref
            key = "bf16" if v.startswith("bf16") else ("tf32" if v == "tf32" else "fp32")
            share = flops / sec / peaks[key] if key in peaks else None
            row = {"arch": args.arch or args.model, "input": list(shape), "batch": b, "variant": v,
                   "device": dev, "ms_per_pass": 1e3 * sec, "gflops": flops / sec / 1e9,
                   "peak_key": key if share is not None else None, "share_of_peak": share,
                   "s_per_image_2100": 2100 * sec, "speedup_vs_nchw": (ref / sec) if ref else None,
                   "mflop_per_pass": flops / 1e6, "cudnn_benchmark": args.cudnn_benchmark, "peaks_tflops": {k: p / 1e12 for k, p in peaks.items()}}
            rows.append(row)
            print(f"| {b} | {v} | {1e3 * sec:.4f} | {flops / sec / 1e9:.1f} | "
                  f"{'-' if share is None else f'{100 * share:.1f}% of {key}'} | {2100 * sec:.3f} | "
                  f"{'-' if not ref else f'{ref / sec:.2f}x'} |", flush=True)
    if args.json:
        with Path(args.json).open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
