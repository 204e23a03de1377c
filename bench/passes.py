"""Forward-backward pass throughput of a classifier: the unit cost of everything Preempt does.

    python -m bench.passes [--model fmnist-linf-adv] [--batch 32,64,128,256,512] [--device cpu]
    python -m bench.passes --arch wrn-34-10 --device cuda --batch 64,128 --amp     # random weights
    python -m bench.passes --arch resnet50 --device cuda --batch 64 --amp

For each batch size, times ``grad_x CE(model(x), y)`` (what every PGD step costs) with the
weights in the default (NCHW) layout and in channels_last, in the same run, and prints
milliseconds per image-pass, the seconds per image at 2,100 passes (the paper's 100 x (20 + 1)),
and the channels_last speed-up. With ``--arch`` a registered architecture with random weights is
timed at its dataset's input size (CIFAR-10 32x32, ImageNet 224x224); ``--amp`` adds bf16 autocast
rows on CUDA. The achieved FLOP rate is printed next to each row (FLOPs counted by
``torch.utils.flop_counter`` for one pass), to compare with the device's peak.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

from preempt.core.models import build_model, load_classifier

INPUT = {"small-cnn": (1, 28, 28), "resnet50": (3, 224, 224)}


def pass_flops(model, shape, device: str) -> int:
    """FLOPs of one forward + input-gradient pass of one image (weights frozen)."""
    x = torch.rand((1,) + shape, device=device)
    with FlopCounterMode(display=False) as fc:
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(model(xa * 1.0), torch.zeros(1, dtype=torch.long, device=device)).backward()
    return fc.get_total_flops()


def time_passes(model, shape, batch: int, device: str, reps: int, amp: bool = False) -> float:
    x = torch.rand((batch,) + shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def one():
        xa = x.clone().requires_grad_(True)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
        return g

    for _ in range(3):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps / batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-linf-adv")
    ap.add_argument("--batch", default="32,64,128,256,512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--arch", default=None, help="time a random-weight architecture instead of --model")
    ap.add_argument("--amp", action="store_true", help="also time bf16 autocast (CUDA)")
    args = ap.parse_args(argv)
    if args.arch:
        nchw = build_model(args.arch, 1000 if args.arch == "resnet50" else 10).to(args.device).eval()
        for p in nchw.parameters():
            p.requires_grad_(False)
        shape, name = INPUT.get(args.arch, (3, 32, 32)), args.arch + " (random weights)"
    else:
        base = load_classifier(args.model, device=args.device, channels_last=False)
        shape, name = (base.spec.channels or 1, *(base.spec.input_size or (28, 28))), args.model
        nchw = base.model
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    flops = pass_flops(nchw, shape, args.device)
    print(f"model {name}, input {list(shape)}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{flops / 1e6:.2f} MFLOP per pass")
    head = "| batch | NCHW ms/pass | channels_last ms/pass | speed-up | channels_last GFLOP/s | s/image at 2100 passes |"
    if args.amp:
        head += " bf16+channels_last ms/pass | GFLOP/s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for b in (int(v) for v in args.batch.split(",")):
        a = time_passes(nchw, shape, b, args.device, args.reps)
        c = time_passes(nhwc, shape, b, args.device, args.reps)
        row = f"| {b} | {1e3 * a:.3f} | {1e3 * c:.3f} | {a / c:.2f}x | {flops / c / 1e9:.1f} | {2100 * c:.2f} |"
        if args.amp:
            h = time_passes(nhwc, shape, b, args.device, args.reps, amp=True)
            row += f" {1e3 * h:.3f} | {flops / h / 1e9:.1f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
