import pytest
import torch

from preempt.core.reconstruct import reconstruct, whitebox_attack
from preempt.core.robustify import RobustifyConfig, robustify
from preempt.core.threat import ThreatModel, flat_norm


def test_reconstruction_is_closer_when_robustification_started_at_the_original(adv_model, fmnist_test):
    """Figure 3: starting Algorithm 1 at x_o makes x_o easy to recover; a random start hides it."""
    torch.manual_seed(0)
    x = fmnist_test[0][:48]
    threat = ThreatModel("l2", 1.5)
    settings = dict(iterations=20, steps=10)
    dists = {}
    for init in ("original", "random"):
        x_rob = robustify(adv_model, x, threat, RobustifyConfig(init=init, **settings)).x_rob
        x_hat = reconstruct(adv_model, x_rob, threat, **settings)
        assert (flat_norm(x_hat - x_rob, "l2") <= threat.delta * (1 + 1e-5)).all()
        dists[init] = flat_norm(x_hat - x, "l2")
    assert dists["original"].median() < dists["random"].median(), dists


def test_whitebox_counts_only_attacks_inside_the_original_ball(adv_model, fmnist_test):
    torch.manual_seed(0)
    x, y = fmnist_test[0][:32], fmnist_test[1][:32]
    threat = ThreatModel("linf", 0.1)
    x_rob = robustify(adv_model, x, threat, RobustifyConfig(iterations=10, steps=5)).x_rob
    # an attack that always moves by the full eps' from x_hat: beyond B_eps(x_orig) when x_hat is far
    flip = lambda xh, yy, eps: (xh + eps).clamp(0, 1)  # noqa: E731
    out = whitebox_attack(adv_model, x_rob, x, y, threat, attack=flip, iterations=5, steps=5)
    for eps, d in out["dist_adv"].items():
        invalid = d > threat.epsilon + 1e-5
        assert out["robust"][eps][invalid].all()
    assert out["robust_worst"].dtype == torch.bool
    assert sorted(out["robust"]) == pytest.approx([0.025, 0.05, 0.075, 0.1])
