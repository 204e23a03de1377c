"""The fixed-seed cases behind ``data/robustify_reference.pt``: outputs of :func:`robustify` recorded
once, so that a restructuring of the algorithm can be checked to change nothing (same seed, same
outputs). ``python -m tests.core.robustify_reference`` rewrites the file from the current code."""

from __future__ import annotations

from pathlib import Path

import torch

from preempt.core.data import fashion_mnist
from preempt.core.models import load_classifier
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel

PATH = Path(__file__).resolve().parent / "data" / "robustify_reference.pt"

# name -> (model, norm, epsilon, config fields, extra robustify() arguments)
CASES = {
    "linf-default": ("fmnist-linf-ours-12ep", "linf", 0.1, dict(iterations=45, steps=5, plateau_window=10), {}),
    "linf-paper-loop": ("fmnist-linf-ours-12ep", "linf", 0.1,
                        dict(iterations=12, steps=5, stop_patience=0, plateau_window=0), {}),
    "linf-pgd-random": ("fmnist-linf-ours-12ep", "linf", 0.1,
                        dict(iterations=12, steps=5, optimizer="pgd", init="random"), {}),
    "linf-targeted-max": ("fmnist-linf-ours-12ep", "linf", 0.1,
                          dict(iterations=10, steps=4, samples=3, inner_loss="targeted", aggregate="max",
                               stop_patience=0, plateau_window=0), {}),
    "l2-default": ("fmnist-l2-ours-8ep", "l2", 1.5, dict(iterations=45, steps=5, plateau_window=10), {}),
    "l2-second-order": ("fmnist-l2-ours-8ep", "l2", 1.5, dict(iterations=6, steps=3, second_order=True), {}),
    "l2-smoothed": ("fmnist-gaussian-0.25", "l2", 0.5, dict(iterations=6, steps=3, sigma=0.25, noise_samples=4), {}),
    "l2-reconstruct": ("fmnist-l2-ours-8ep", "l2", 1.5, dict(iterations=8, steps=3, optimizer="pgd"),
                       {"maximize": True}),
    "linf-warm-start": ("fmnist-linf-ours-12ep", "linf", 0.1, dict(iterations=10, steps=4), {"x_init": True}),
}


def run_case(name: str) -> dict:
    model_name, norm, eps, fields, extra = CASES[name]
    model = load_classifier(model_name).model
    x, _ = fashion_mnist("test", limit=8)
    torch.manual_seed(1234)
    if extra.get("x_init"):
        extra = {**extra, "x_init": (x + 0.3 * torch.randn_like(x)).clamp(0, 1)}
    res = robustify(model, x, ThreatModel(norm, eps), RobustifyConfig(**fields), **extra)
    return {"x_rob": res.x_rob, "label": res.label, "robust_loss": res.robust_loss,
            "passes_per_image": res.passes_per_image, "stopped_at": res.stopped_at,
            "history": torch.tensor(res.history)}


if __name__ == "__main__":
    torch.set_num_threads(2)
    PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: run_case(name) for name in CASES}, PATH)
    print(f"wrote {PATH}")
