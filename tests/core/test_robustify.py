import math

import pytest
import torch
import torch.nn as nn

from preempt.core.attacks import pgd, pgd_dynamics
from preempt.core.robustify import L2_STOP_LOSS, RobustifyConfig, robustify
from preempt.core.threat import Geometry, ThreatModel, flat_norm
from tests.conftest import accuracy


def _robust_accuracy(model, x, y, threat, restarts=1):
    x_adv = pgd(model, x, y, threat.geometry, threat.epsilon, steps=20, restarts=restarts)
    with torch.no_grad():
        return float(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean())


@pytest.mark.parametrize("norm,eps,optimizer", [("linf", 0.1, None), ("linf", 0.1, "pgd"), ("l2", 1.5, None)])
def test_robustified_images_keep_label_budget_and_resist_pgd(standard_model, fmnist_test, norm, eps, optimizer):
    adv_model = standard_model  # an undefended model: a wide clean-minus-PGD gap to close
    torch.manual_seed(0)
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    threat = ThreatModel(norm, eps)
    with torch.no_grad():
        pred = adv_model(x).argmax(1)
    res = robustify(adv_model, x, threat, RobustifyConfig(iterations=30, steps=10, optimizer=optimizer))
    # the budget is kept, the image stays an image
    assert (flat_norm(res.x_rob - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert res.x_rob.min() >= 0 and res.x_rob.max() <= 1
    # the label protected is c(x_orig), and it is kept
    assert torch.equal(res.label, pred)
    with torch.no_grad():
        assert float((adv_model(res.x_rob).argmax(1) == pred).float().mean()) >= 0.95
    # the attack fails on robustified images far more often than on the originals
    clean = accuracy(adv_model, x, y)
    before = _robust_accuracy(adv_model, x, y, threat)
    after = _robust_accuracy(adv_model, res.x_rob, y, threat)
    assert clean - before > 0.1, "the fixture model should be attackable"
    assert after - before >= 0.4 * (clean - before), (clean, before, after)
    assert res.robust_loss.mean() < res.history[0]


def test_random_init_starts_inside_delta_ball(adv_model, fmnist_test):
    torch.manual_seed(0)
    x = fmnist_test[0][:8]
    for norm, eps in (("linf", 0.1), ("l2", 1.5)):
        res = robustify(adv_model, x, ThreatModel(norm, eps), RobustifyConfig(iterations=2, steps=2, init="random"))
        assert (flat_norm(res.x_rob - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
        assert (res.x_rob != x).any()


def test_warm_start_is_projected_into_the_budget_and_equals_the_default_at_the_original(adv_model, fmnist_test):
    x = fmnist_test[0][:6]
    for norm, eps in (("linf", 0.1), ("l2", 1.5)):
        threat, cfg = ThreatModel(norm, eps), RobustifyConfig(iterations=3, steps=2)
        torch.manual_seed(0)
        plain = robustify(adv_model, x, threat, cfg)
        torch.manual_seed(0)
        same = robustify(adv_model, x, threat, cfg, x_init=x)
        assert torch.allclose(plain.x_rob, same.x_rob, atol=1e-6)
        far = (x + 10 * eps * torch.randn_like(x)).clamp(0, 1)  # far outside the ball: projected first
        res = robustify(adv_model, x, threat, cfg, x_init=far)
        assert (flat_norm(res.x_rob - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
        assert not torch.allclose(res.x_rob, plain.x_rob, atol=1e-3)  # it did start elsewhere
    with pytest.raises(ValueError, match="x_init has shape"):
        robustify(adv_model, x, ThreatModel("linf", 0.1), RobustifyConfig(iterations=1, steps=1), x_init=x[:2])


def test_n_random_starts_run_as_one_batch(adv_model, fmnist_test):
    calls = []
    model = nn.Sequential(adv_model)
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    robustify(model, fmnist_test[0][:5], ThreatModel("linf", 0.1), RobustifyConfig(iterations=2, steps=3, samples=4))
    assert set(calls[1:]) == {20}  # after the label pass, every pass sees 5 images x 4 starts


def test_rmsprop_is_refused_for_l2():
    with pytest.raises(ValueError):
        RobustifyConfig(optimizer="rmsprop").resolved(ThreatModel("l2", 0.5))


def _smooth_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def test_exact_second_order_l2_gradient_matches_finite_differences():
    """Section 3.4: with second_order=True the update gradient is the exact derivative of l(x^{a,T}(x_r))."""
    model = _smooth_mlp()
    geometry = Geometry("l2")
    x_r = (0.4 + 0.2 * torch.rand(1, 1, 2, 3, dtype=torch.float64))
    y = torch.tensor([0])
    eta = 0.05 * torch.randn_like(x_r)

    def objective(center, second_order=True):
        start = center + eta
        x_adv = pgd_dynamics(model, center, y, geometry, 0.2, steps=4, step_size=0.05,
                             x_start=start, second_order=second_order)
        return nn.functional.cross_entropy(model(x_adv), y)

    c = x_r.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(objective(c), c)
    c = x_r.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(objective(c, second_order=False), c)
    h = 1e-6
    fd = torch.zeros_like(x_r)
    for i in range(x_r.numel()):
        e = torch.zeros_like(x_r).view(-1)
        e[i] = h
        e = e.view_as(x_r)
        with torch.enable_grad():
            fd.view(-1)[i] = (objective(x_r + e) - objective(x_r - e)).detach() / (2 * h)
    assert torch.allclose(exact, fd, rtol=1e-4, atol=1e-7), (exact, fd)
    # the first-order approximation drops the Hessian terms, so it is measurably different
    assert not torch.allclose(first, fd, rtol=1e-3, atol=1e-6)


def test_smoothed_robustification_keeps_budget(adv_model, fmnist_test):
    torch.manual_seed(0)
    x = fmnist_test[0][:8]
    res = robustify(adv_model, x, ThreatModel("l2", 0.5),
                    RobustifyConfig(iterations=3, steps=2, sigma=0.25, noise_samples=4))
    assert (flat_norm(res.x_rob - x, "l2") <= 0.5 * (1 + 1e-5)).all()
    assert res.passes == 3 * 3 * 4


def test_early_stopping_saves_passes_and_keeps_protection(adv_model, fmnist_test):
    """Images the attack already fails on stop early; the rest run on; protection holds."""
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    threat = ThreatModel("linf", 0.1)
    cfg = dict(iterations=30, steps=10)
    torch.manual_seed(0)
    full = robustify(adv_model, x, threat, RobustifyConfig(**cfg, stop_patience=0))
    torch.manual_seed(0)
    early = robustify(adv_model, x, threat, RobustifyConfig(**cfg, stop_patience=3))
    assert full.passes == 30 * 11 and (full.stopped_at == 30).all()
    stopped = early.stopped_at < 30
    assert stopped.float().mean() >= 0.3  # an adversarially trained model: many images are robust already
    assert early.passes < 0.8 * full.passes
    # a stopped image paid its iterations and at least one confirmation attack
    assert (early.passes_per_image[stopped] >= (early.stopped_at[stopped] + 1) * 11).all()
    assert (early.passes_per_image[~stopped] >= 30 * 11).all()
    # the stopping rule held: the last loss of a stopped image is below ln 2
    assert (early.robust_loss[stopped] < math.log(2)).all()
    assert (flat_norm(early.x_rob - x, "linf") <= 0.1 + 1e-6).all()
    assert torch.equal(early.label, full.label)
    assert _robust_accuracy(adv_model, early.x_rob, y, threat) >= _robust_accuracy(adv_model, full.x_rob, y, threat) - 0.05


def test_plateau_stopping_stops_images_that_no_longer_improve(adv_model, fmnist_test):
    x, y = fmnist_test[0][:64], fmnist_test[1][:64]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    res = robustify(adv_model, x, threat, RobustifyConfig(iterations=40, steps=5, stop_patience=0,
                                                          plateau_window=5, plateau_tol=0.5))
    stopped = res.stopped_at < 40
    assert stopped.any() and (res.stopped_at[stopped] >= 10).all()  # never before two windows
    assert (res.passes_per_image[stopped] == res.stopped_at[stopped] * 6).all()  # no pass after stopping
    assert (flat_norm(res.x_rob - x, "linf") <= 0.1 + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(res.label, adv_model(x).argmax(1))


def test_runner_up_targets_are_the_most_likely_wrong_classes(adv_model, fmnist_test):
    from preempt.core.robustify import runner_up_targets

    x, _ = fmnist_test
    x = x[:8]
    with torch.no_grad():
        z = adv_model(x)
    y = z.argmax(1)
    n = 3
    t = runner_up_targets(adv_model, x.repeat_interleave(n, 0), y.repeat_interleave(n, 0), n).view(8, n)
    assert not (t == y[:, None]).any()  # never the protected class
    for i in range(8):
        wrong = [c for c in z[i].argsort(descending=True).tolist() if c != int(y[i])]
        assert t[i].tolist() == wrong[:n]  # start k aims at the (k+1)-th most likely wrong class


def test_targeted_worst_start_inner_attack_keeps_budget_and_label(adv_model, fmnist_test):
    x, _ = fmnist_test
    x = x[:16]
    threat = ThreatModel("linf", 0.1)
    cfg = RobustifyConfig(iterations=6, steps=5, samples=2, inner_loss="targeted", aggregate="max")
    r = robustify(adv_model, x, threat, cfg)
    assert float(r.linf.max()) <= 0.1 + 1e-6
    with torch.no_grad():
        assert torch.equal(adv_model(r.x_rob).argmax(1), r.label)


def test_unknown_inner_loss_or_aggregate_is_refused():
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(ValueError, match="inner_loss"):
        RobustifyConfig(inner_loss="dlr").resolved(threat)
    with pytest.raises(ValueError, match="aggregate"):
        RobustifyConfig(aggregate="median").resolved(threat)


def test_l2_images_stop_only_below_the_stricter_threshold(adv_model, fmnist_test):
    """For l2 the default stop threshold is 0.1, not ln 2 (AutoAttack broke most l2 images stopped
    at ln 2): every image that stops early stops below 0.1, and the ln 2 rule stops images the new
    rule runs on."""
    x, _ = fmnist_test
    x = x[:48]
    threat = ThreatModel("l2", 1.5)
    assert RobustifyConfig().resolved(threat).stop_loss == L2_STOP_LOSS == 0.1
    assert RobustifyConfig().resolved(ThreatModel("linf", 0.1)).stop_loss == math.log(2)
    runs = {}
    for name, stop in (("default", None), ("ln2", math.log(2))):
        torch.manual_seed(0)
        runs[name] = robustify(adv_model, x, threat, RobustifyConfig(iterations=20, steps=5, plateau_window=0,
                                                                     stop_loss=stop))
    for name, limit in (("default", 0.1), ("ln2", math.log(2))):
        r = runs[name]
        stopped = r.stopped_at < 20
        assert stopped.any()
        assert (r.robust_loss[stopped] < limit).all()
        assert float(r.l2.max()) <= 1.5 + 1e-4
    assert runs["default"].passes > runs["ln2"].passes
    ln2 = runs["ln2"]
    assert ((ln2.stopped_at < 20) & (ln2.robust_loss >= 0.1)).any()  # stopped by ln 2, not by 0.1
