"""The ceiling the convolutions themselves put on a pass: each layer's kernels timed alone.

    python -m bench.layers --arch resnet50 --device cuda --batch 64 [--dtype bf16] [--peak] [--json F]

A pass (``grad_x CE(model(x), y)``, weights frozen) is, in FLOPs, almost only its convolutions and
linear layers: each runs forward and once more backward for the input gradient. This script records
the input shape of every ``Conv2d`` and ``Linear`` of the model at ``--batch`` (forward hooks), then
times each distinct layer alone, as fast as the library's kernels run it: the forward product and
the input-gradient product (``aten.convolution_backward`` with only the input mask, as autograd calls
it), inputs in channels_last and ``--dtype``; on CUDA, ``--reps`` calls are captured as one CUDA graph
and replayed, so launch gaps are not counted. Summing count x time over the layers gives the time a
pass would take if nothing but these kernels ran, back to back, with no normalisation, activation,
cast or launch cost between them: an upper bound on the FLOP rate any implementation built on these
kernels reaches. Printed per layer and in total, as a share of the device's measured matrix peak with
``--peak`` (an 8192^3 product in the same dtype).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.passes import INPUT, matmul_peak, pad_stem, sync
from preempt.core.models import build_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def layer_shapes(model: torch.nn.Module, shape: tuple, batch: int, device: str) -> "OrderedDict[tuple, dict]":
    """The distinct Conv2d / Linear layers of ``model`` at ``batch``, each with its count and input shape."""
    seen: "OrderedDict[tuple, dict]" = OrderedDict()
    hooks = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, torch.nn.Conv2d):
            key = ("conv", tuple(x.shape), tuple(module.weight.shape), module.stride, module.padding,
                   module.dilation, module.groups)
        else:
            key = ("linear", tuple(x.shape), tuple(module.weight.shape))
        entry = seen.setdefault(key, {"module": module, "count": 0, "out": tuple(output.shape)})
        entry["count"] += 1

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.rand((batch,) + shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_flops(key: tuple, out: tuple) -> int:
    """FLOPs of one forward product of the layer (the input-gradient product costs the same)."""
    if key[0] == "conv":
        w = key[2]  # (out_ch, in_ch / groups, kh, kw)
        return 2 * int(torch.tensor(out).prod()) * w[1] * w[2] * w[3]
    n = int(torch.tensor(key[1][:-1]).prod())
    return 2 * n * key[2][0] * key[2][1]


def time_layer(key: tuple, entry: dict, dtype: torch.dtype, device: str, reps: int) -> tuple[float, float]:
    """Seconds of one forward and one input-gradient product of the layer, alone."""
    m = entry["module"]
    w = m.weight.detach().to(dtype)
    if key[0] == "conv":
        x = torch.randn(key[1], device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
        g = torch.randn(entry["out"], device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

        def fwd():
            return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)

        def bwd():
            return torch.ops.aten.convolution_backward(g, x, w, None, m.stride, m.padding, m.dilation, False,
                                                       [0, 0], m.groups, [True, False, False])[0]
    else:
        x = torch.randn(key[1], device=device, dtype=dtype)
        g = torch.randn(entry["out"], device=device, dtype=dtype)

        def fwd():
            return x @ w.t()

        def bwd():
            return g @ w

    return timed(fwd, device, reps), timed(bwd, device, reps)


def timed(fn, device: str, reps: int) -> float:
    """Seconds per call of ``fn``; on CUDA, ``reps`` calls captured as one CUDA graph and replayed, so
    that the host's launch cost cannot hide behind (or inflate) a small kernel's time."""
    if device.startswith("cuda"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (cuDNN's algorithm choice, workspaces) off the capture
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            graph.replay()
        sync(device)
        return (time.perf_counter() - t) / (3 * reps)
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--peak", action="store_true", help="measure the device's matrix-multiply peak in --dtype first")
    ap.add_argument("--json", default=None, help="append one JSON line with the totals and every layer")
    ap.add_argument("--stem-pad", type=int, default=0,
                    help="pad the first convolution's input channels to this many (zero weights); the rate is then "
                         "the unpadded model's FLOPs over the padded layers' time")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark) instead of its heuristic")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dtype = DTYPES[args.dtype]
    model = build_model(args.arch, 1000 if args.arch == "resnet50" else 10).to(args.device).eval()
    shape = INPUT.get(args.arch, (3, 32, 32))
    useful = sum(2 * layer_flops(k, e["out"]) * e["count"] for k, e in layer_shapes(model, shape, 1, args.device).items())
    if args.stem_pad:
        model = pad_stem(model, args.stem_pad)
    layers = layer_shapes(model, shape, args.batch, args.device)
    peak = None
    if args.peak:
        cuda = args.device.startswith("cuda")
        peak = matmul_peak(args.device, dtype, n=8192 if cuda else 1024, tf32=False)
        print(f"measured {args.dtype} matrix-multiply peak: {peak / 1e12:.1f} TFLOP/s")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.arch} at batch {args.batch}, {args.dtype}, channels_last, device {args.device} ({dev}), "
          f"torch {torch.__version__}{', cudnn.benchmark on' if args.cudnn_benchmark else ''}: {len(layers)} distinct layers, "
          f"{sum(e['count'] for e in layers.values())} in all")
    print("| layer (input -> weight, stride) | count | GFLOP fwd | fwd ms | fwd TFLOP/s | bwd-input ms | bwd TFLOP/s |"
          + (" share of peak (fwd+bwd) |" if peak else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if peak else ""))
    rows, total_flops, total_time = [], 0.0, 0.0
    for key, entry in layers.items():
        flops = layer_flops(key, entry["out"])
        tf, tb = time_layer(key, entry, dtype, args.device, args.reps)
        total_flops += 2 * flops * entry["count"]
        total_time += (tf + tb) * entry["count"]
        share = 2 * flops / (tf + tb) / peak if peak else None
        name = f"{key[0]} {list(key[1])} -> {list(key[2])}" + (f" s{key[3][0]}" if key[0] == "conv" else "")
        rows.append({"layer": name, "count": entry["count"], "gflop_fwd": flops / 1e9, "fwd_ms": 1e3 * tf,
                     "bwd_ms": 1e3 * tb, "share_of_peak": share})
        print(f"| {name} | {entry['count']} | {flops / 1e9:.3f} | {1e3 * tf:.4f} | {flops / tf / 1e12:.1f} | "
              f"{1e3 * tb:.4f} | {flops / tb / 1e12:.1f} |" + (f" {100 * share:.1f}% |" if peak else ""), flush=True)
    rate = useful * args.batch / total_time  # the unpadded model's FLOPs: padding is not useful work
    summary = {"arch": args.arch, "batch": args.batch, "dtype": args.dtype, "device": dev,
               "torch": torch.__version__, "cudnn_benchmark": args.cudnn_benchmark, "layer_gflop_per_pass": total_flops / 1e9,
               "layer_ms_per_pass": 1e3 * total_time, "stem_pad": args.stem_pad,
               "useful_gflop_per_pass": useful * args.batch / 1e9, "layer_tflops": rate / 1e12,
               "peak_tflops": peak / 1e12 if peak else None, "share_of_peak": rate / peak if peak else None,
               "layers": rows}
    print(f"layers alone, back to back: {total_flops / 1e9:.1f} GFLOP ({useful * args.batch / 1e9:.1f} of the unpadded "
          f"model) in {1e3 * total_time:.3f} ms per batch pass "
          f"= {rate / 1e12:.1f} TFLOP/s" + (f" = {100 * rate / peak:.1f}% of the measured peak" if peak else ""))
    if args.json:
        with Path(args.json).open("a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
