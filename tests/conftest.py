"""Shared fixtures: real Fashion-MNIST subsets and small CNNs trained once per test session."""

import pytest
import torch

from preempt.core.data import fashion_mnist
from preempt.core.models import build_model
from preempt.core.threat import ThreatModel
from preempt.core.train import TrainConfig, train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fmnist_train():
    return fashion_mnist("train", limit=6000)


@pytest.fixture(scope="session")
def fmnist_test():
    return fashion_mnist("test", limit=500)


@pytest.fixture(scope="session")
def standard_model(fmnist_train):
    """An undefended small CNN (clean training, 2 epochs on 6000 images)."""
    torch.manual_seed(0)
    x, y = fmnist_train
    model, _ = train(build_model("small-cnn"), x, y, TrainConfig(method="standard", epochs=2, batch_size=64))
    return model.eval()


@pytest.fixture(scope="session")
def adv_model(fmnist_train):
    """A small CNN adversarially trained for linf eps = 0.1 (PGD-5, 3 epochs on 6000 images)."""
    torch.manual_seed(0)
    x, y = fmnist_train
    cfg = TrainConfig(method="adversarial", epochs=3, batch_size=64, attack_steps=5, attack_step=0.05)
    model, _ = train(build_model("small-cnn"), x, y, cfg, ThreatModel("linf", 0.1))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
