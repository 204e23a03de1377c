"""Forward-backward pass throughput of a classifier: the unit cost of everything Preempt does.

    python -m bench.passes [--model fmnist-linf-adv] [--batch 32,64,128,256,512] [--device cpu]

For each batch size, times ``grad_x CE(model(x), y)`` (what every PGD step costs) with the
weights in the default (NCHW) layout and in channels_last, in the same run, and prints
milliseconds per image-pass, the seconds per image at 2,100 passes (the paper's 100 x (20 + 1)),
and the channels_last speed-up.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from preempt.core.models import load_classifier


def time_passes(model, shape, batch: int, device: str, reps: int) -> float:
    x = torch.rand((batch,) + shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def one():
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
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
    args = ap.parse_args(argv)
    base = load_classifier(args.model, device=args.device, channels_last=False)
    shape = (base.spec.channels or 1, *(base.spec.input_size or (28, 28)))
    nchw = base.model
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    print(f"model {args.model}, input {list(shape)}, device {args.device}, threads {torch.get_num_threads()}")
    print("| batch | NCHW ms/pass | channels_last ms/pass | speed-up | s/image at 2100 passes (channels_last) |")
    print("|---|---|---|---|---|")
    for b in (int(v) for v in args.batch.split(",")):
        a = time_passes(nchw, shape, b, args.device, args.reps)
        c = time_passes(nhwc, shape, b, args.device, args.reps)
        print(f"| {b} | {1e3 * a:.3f} | {1e3 * c:.3f} | {a / c:.2f}x | {2100 * c:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
