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


def test_whitebox_attacks_only_images_whose_outcome_can_count_and_scores_as_if_it_attacked_all(adv_model, fmnist_test):
    """Skipping images that no attack could make valid (or that are not scored) changes no figure."""
    torch.manual_seed(0)
    x, y = fmnist_test[0][:32], fmnist_test[1][:32]
    threat = ThreatModel("linf", 0.1)
    x_rob = robustify(adv_model, x, threat, RobustifyConfig(iterations=10, steps=5)).x_rob
    x_hat = reconstruct(adv_model, x_rob, threat, iterations=5, steps=5)
    dist_hat = flat_norm(x_hat - x, "linf")

    def step(xh, yy, eps):  # deterministic: one signed gradient step of the full eps'
        xh = xh.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(adv_model(xh), yy)
        g, = torch.autograd.grad(loss, xh)
        return (xh + eps * g.sign()).clamp(0, 1).detach()

    seen = []
    def recording(xh, yy, eps):
        seen.append((eps, len(xh)))
        return step(xh, yy, eps)

    count = torch.arange(32) % 4 != 0  # a quarter of the images not scored
    out = whitebox_attack(adv_model, x_rob, x, y, threat, attack=recording, x_hat=x_hat, count=count)
    for eps, n_attacked in seen:
        assert n_attacked == int((count & (dist_hat <= threat.epsilon + eps + 1e-5)).sum())
    assert sum(n for _, n in seen) < 4 * int(count.sum())  # some work was skipped
    for eps in out["robust"]:  # the brute-force figure: attack every image, keep the valid wins
        x_adv = step(x_hat, y, eps)
        with torch.no_grad():
            wrong = adv_model(x_adv).argmax(1) != y
        ok = ~(wrong & (flat_norm(x_adv - x, "linf") <= threat.epsilon + 1e-5))
        assert torch.equal(out["robust"][eps][count], ok[count])
