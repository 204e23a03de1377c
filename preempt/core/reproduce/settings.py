"""The settings ``preempt reproduce`` evaluates, the models each uses and how each model was trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from ..robustify import RobustifyConfig
from ..train import render_options

PAPER_GAP_CLOSURE = {  # the paper's CIFAR-10 Tables 1-2, (ADV, Ours) row: (Ours - None) / (clean - None)
    "linf": {"greybox_pgd": 0.98, "greybox_aa": 0.86},
    "l2": {"greybox_pgd": 0.68, "greybox_aa": 0.63},
}


@dataclass
class Setting:
    key: str
    norm: str
    epsilon: float
    delta: float
    models: Dict[str, str]  # role (adv, ours, gaussian) -> registered model name
    sigma: Optional[float] = None
    columns: tuple = ("clean", "greybox_pgd", "greybox_aa", "whitebox_pgd", "whitebox_aa")


SETTINGS = {
    "linf": Setting("linf", "linf", 0.1, 0.1, {"adv": "fmnist-linf-adv-8ep", "ours": "fmnist-linf-ours-12ep"}),
    "l2": Setting("l2", "l2", 1.5, 1.5, {"adv": "fmnist-l2-adv-8ep", "ours": "fmnist-l2-ours-8ep"}),
    "smoothing": Setting("smoothing", "l2", 0.5, 0.5, {"gaussian": "fmnist-gaussian-0.25"}, sigma=0.25,
                         columns=("clean", "greybox_pgd", "greybox_pgd10", "whitebox_pgd", "whitebox_pgd10",
                                  "certified")),
}


def _short(method: str, norm: str, epsilon: float, **more) -> dict:
    """Half the training set for 3 epochs (each model within 60 minutes of the 2-core reference machine)."""
    return {"method": method, "norm": norm, "epsilon": epsilon, "epochs": 3, "limit": 30000, "attack_steps": 7,
            **more, "val_size": 2000, "seed": 0}


def _full(method: str, norm: str, epochs: int) -> dict:
    """The whole training set, a cosine schedule; linf with PGD steps of 0.03, l2 with the default step."""
    epsilon, step = {"linf": (0.1, {"attack_step": 0.03}), "l2": (1.5, {})}[norm]
    return {"method": method, "norm": norm, "epsilon": epsilon, "epochs": epochs, "lr_schedule": "cosine",
            "attack_steps": 7, **step, "val_size": 2000, "seed": 0}


# The `preempt train` options of every model the reports use or compare (the card of each records the
# command; docs/models.md lists them): keyword arguments of core.train.train_fashion_mnist. Only the
# models of the reports and the default ship in preempt/models; the others' cards are in docs/models/cards.
TRAIN_RECIPES = {
    "fmnist-linf-adv": _short("adversarial", "linf", 0.1, attack_step=0.03),
    "fmnist-linf-ours": _short("preemptive", "linf", 0.1, attack_step=0.03),
    "fmnist-linf-adv-8ep": _full("adversarial", "linf", 8),
    "fmnist-linf-ours-6ep": _full("preemptive", "linf", 6),
    "fmnist-linf-ours-12ep": _full("preemptive", "linf", 12),
    "fmnist-l2-adv": _short("adversarial", "l2", 1.5),
    "fmnist-l2-ours": _short("preemptive", "l2", 1.5),
    "fmnist-l2-adv-8ep": _full("adversarial", "l2", 8),
    "fmnist-l2-ours-8ep": _full("preemptive", "l2", 8),
    "fmnist-l2-ours-8ep-l3": {**_full("preemptive", "l2", 8), "descent_steps": 3, "descent_step": 0.75},
    "fmnist-l2-ours-8ep-l3-orig25": {**_full("preemptive", "l2", 8), "descent_steps": 3, "descent_step": 0.75,
                                     "original_fraction": 0.25},
    "fmnist-gaussian-0.25": {"method": "gaussian", "sigma": 0.25, "epochs": 5, "limit": 30000, "val_size": 2000,
                             "seed": 0},
}


def train_command(name: str) -> str:
    """The ``preempt train`` command line of a recipe (without ``-o``)."""
    return f"preempt train {render_options(TRAIN_RECIPES[name])}"


@dataclass
class ReproduceConfig:
    n: int = 1000
    chunk: int = 100
    attacks: tuple = ("pgd", "aa")
    whitebox: bool = True
    whitebox_attacks: Optional[tuple] = None  # None: every attack also runs white-box
    device: str = "cpu"
    seed: int = 0
    robustify: RobustifyConfig = field(default_factory=RobustifyConfig)
    # smoothing
    noise_samples: int = 8  # M, Gaussian draws per randomized-PGD step (attack and robustification)
    predict_samples: int = 100  # draws of the Monte-Carlo smoothed prediction used for accuracy
    certify_n0: int = 100
    certify_n: int = 10000
    certify_alpha: float = 0.001
