"""What an amortised start buys: a small network, trained once per classifier, that predicts a protective change
in one forward pass, used as the start of the product's robustification.

    python -m bench.initializer [-n 500] [--train-images 10000] [--epochs 3] [--model fmnist-linf-ours-12ep]
        [--json F] [--markdown F]

The idea of the "Fast Preemption" line of work (arXiv 2407.15524) and of one-pass protectors: instead of
searching each image's robust point from scratch, learn a map ``x -> x + g(x)`` (``g`` inside the delta ball)
that lands near one. Training (:func:`train_initializer`) minimises the same objective as Algorithm 1, the
cross-entropy of the classifier's label at the end point of a T-step PGD attack from ``x + g(x)``, over the
first ``--train-images`` Fashion-MNIST training images, with Adam, the classifier frozen.

Rows, on the first ``n`` test images (labels: the classifier's predictions, as the product protects them):

- ``originals``: the images themselves.
- ``initializer alone``: ``x + g(x)``, one forward pass, rounded to 8 bits inside the budget.
- ``robustify from the original``: the product's robustifier at its defaults (early stopping), from ``x``.
- ``robustify from the initializer``: the same, started at ``x + g(x)`` (``robustify(x_init=...)``).
- ``robustify from half the initializer``: started at ``x + g(x) / 2`` (``g`` often sits at the edge of the
  linf box, where the tanh-parameterised RMSprop update moves slowly).

Each row: the robustifier's passes per image and grey-box PGD-20 accuracy (``--attacks pgd,aa`` adds
AutoAttack). The training's wall time and passes per training image are in the JSON.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import emit, robust_accuracy
from preempt.core.data import fashion_mnist
from preempt.core.images import quantize_within_budget
from preempt.core.robustify import InnerObjective, RobustifyConfig, robustify
from preempt.core.threat import ThreatModel
from preempt.registry import DEFAULT_MODEL


class Initializer(nn.Module):
    """``x -> x + g(x)`` with ``g`` inside the delta ball: a small encoder (two stride-2 convolutions) whose
    features, upsampled to the image, are decoded together with the image into the change."""

    def __init__(self, threat: ThreatModel, channels: int = 1, width: int = 32):
        super().__init__()
        self.norm, self.geometry, self.delta = threat.norm, threat.geometry, threat.delta
        self.encode = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.decode = nn.Sequential(nn.Conv2d(2 * width + channels, width, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(width, channels, 3, padding=1))

    def change(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(self.encode(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        raw = self.decode(torch.cat([h, x], 1))
        if self.norm == "linf":  # tanh rather than a clip: no coordinate loses its gradient for good
            return self.delta * torch.tanh(raw)
        return self.geometry.project(x + raw, x, self.delta) - x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.change(x)).clamp(0.0, 1.0)


def train_initializer(model: nn.Module, threat: ThreatModel, x: torch.Tensor, epochs: int = 3, batch: int = 128,
                      steps: int = 10, lr: float = 1e-3, seed: int = 0) -> tuple:
    """Train an :class:`Initializer` for the frozen ``model`` on ``x``; ``(initializer, history)``.

    The loss is Algorithm 1's: the cross-entropy of ``model``'s prediction on ``x`` at the end point of a
    ``steps``-step PGD attack (step eps/4) from ``x + g(x)``, its gradient first-order as the robustifier's."""
    torch.manual_seed(seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    net = Initializer(threat, channels=x.shape[1])
    inner = InnerObjective(model, threat, RobustifyConfig(steps=steps).resolved(threat))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        perm, total = torch.randperm(len(x)), 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = inner(net(x[idx]), y[idx])[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "robust_loss": round(total / len(x), 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(history[-1], flush=True)
    net.eval()
    return net, history


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="the training attack's PGD steps")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--attacks", default="pgd")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    from preempt import pipeline
    from preempt.request import RobustifyRequest

    protector = pipeline.load_protector(args.model)
    model = protector.judge.model
    request = RobustifyRequest.resolve(protector.judge.card, args.model)
    threat = ThreatModel(**request.threat_fields())
    config = RobustifyConfig(**request.config_fields())
    attacks = [a for a in args.attacks.split(",") if a]
    x_train = fashion_mnist("train", limit=args.train_images)[0]
    net, history = train_initializer(model, threat, x_train, args.epochs, steps=args.steps, seed=args.seed)
    x, y = fashion_mnist("test", limit=args.n)[:2]
    with torch.no_grad():
        start = torch.cat([net(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    starts = {"robustify from the original": None, "robustify from the initializer": start,
              "robustify from half the initializer": x + (start - x) / 2}
    result = {"n_images": len(x), "model": args.model, "threat": request.threat_fields(), "config": config.__dict__,
              "training": {"images": len(x_train), "epochs": args.epochs, "attack_steps": args.steps,
                           "passes_per_image": args.epochs * (args.steps + 1), "history": history,
                           "seconds": history[-1]["seconds"]},
              "threads": torch.get_num_threads(), "rows": []}
    cols = ["row", "passes", "clean"] + [f"greybox_{a}" for a in attacks]

    def add(name, xr, passes):
        torch.manual_seed(args.seed)
        row = {"row": name, "passes": passes, **robust_accuracy(model, xr, y, threat, attacks, args.batch)}
        result["rows"].append(row)
        print(row, flush=True)

    add("originals", x, None)
    add("initializer alone", quantize_within_budget(start, x, threat.norm, threat.delta), 1.0)
    for name, x_init in starts.items():
        torch.manual_seed(args.seed)
        outs, passes = [], []
        for i in range(0, len(x), args.batch):
            r = robustify(model, x[i:i + args.batch], threat, config,
                          x_init=None if x_init is None else x_init[i:i + args.batch])
            outs.append(quantize_within_budget(r.x_rob, x[i:i + args.batch], threat.norm, threat.delta))
            passes.append(r.passes_per_image.float())
        add(name, torch.cat(outs), round(float(torch.cat(passes).mean()), 1))
    emit(result, cols, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
