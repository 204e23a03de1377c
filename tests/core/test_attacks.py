import pytest
import torch

from preempt.core.attacks import pgd
from preempt.core.autoattack import STANDARD, AutoAttack, apgd_t_by_rank
from preempt.core.protect import APGD_T_STEPS
from preempt.core.threat import Geometry, flat_norm
from tests.conftest import accuracy


def test_pgd_breaks_an_undefended_model(standard_model, fmnist_test):
    x, y = fmnist_test[0][:200], fmnist_test[1][:200]
    clean = accuracy(standard_model, x, y)
    torch.manual_seed(0)
    x_adv = pgd(standard_model, x, y, Geometry("linf"), 0.1)
    noise = Geometry("linf").random_in_ball(x, 0.1)  # same budget, no gradient
    assert clean > 0.7
    assert accuracy(standard_model, noise, y) > clean - 0.1
    assert accuracy(standard_model, x_adv, y) < 0.5 * clean
    assert (flat_norm(x_adv - x, "linf") <= 0.1 + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_l2_stays_in_budget_and_hurts(standard_model, fmnist_test):
    x, y = fmnist_test[0][:200], fmnist_test[1][:200]
    torch.manual_seed(0)
    x_adv = pgd(standard_model, x, y, Geometry("l2"), 1.5)
    assert (flat_norm(x_adv - x, "l2") <= 1.5 * (1 + 1e-5)).all()
    assert accuracy(standard_model, x_adv, y) < 0.5 * accuracy(standard_model, x, y)


def test_autoattack_is_configured_as_the_standard_version(standard_model):
    attacks = AutoAttack(standard_model, "linf", 8 / 255, num_classes=10).build()
    assert list(attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert attacks["apgd-ce"].steps == 100 and attacks["apgd-ce"].loss == "ce" and attacks["apgd-ce"].n_restarts == 1
    assert attacks["apgd-t"].steps == 100 and attacks["apgd-t"].n_target_classes == 9
    assert attacks["fab-t"].steps == 100 and attacks["fab-t"].multi_targeted and attacks["fab-t"].n_target_classes == 9
    assert attacks["square"].n_queries == 5000 and attacks["square"].p_init == 0.8
    assert all(a.eps == 8 / 255 for a in attacks.values())
    assert STANDARD["apgd-ce"]["steps"] == 100


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_autoattack_is_at_least_as_strong_as_pgd(standard_model, fmnist_test, norm, eps):
    x, y = fmnist_test[0][:48], fmnist_test[1][:48]
    torch.manual_seed(0)
    aa = AutoAttack(standard_model, norm, eps, components=("apgd-ce", "apgd-t")).run(x, y)
    assert (flat_norm(aa - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert accuracy(standard_model, aa, y) <= accuracy(standard_model, pgd(standard_model, x, y, Geometry(norm), eps), y)


def test_apgd_t_by_rank_at_100_everywhere_is_autoattacks_apgd_t(adv_model, fmnist_test):
    """The check's APGD-T toward each runner-up class with its own iterations gives, at AutoAttack's 100 toward
    all nine, exactly AutoAttack's APGD-T verdicts; with fewer toward the unlikely classes it still breaks
    what it breaks inside the budget, and the classes tried are the most likely ones."""
    x, y = fmnist_test
    x, y = x[:48], y[:48]
    adv = AutoAttack(adv_model, "linf", 0.1, components=("apgd-t",)).run(x, y)
    with torch.no_grad():
        full = adv_model(adv).argmax(1) == y
    by_rank = apgd_t_by_rank(adv_model, x, y, "linf", 0.1, 10, (100,) * 9)
    assert torch.equal(by_rank, full)
    assert int((~full).sum()) > int((adv_model(x).argmax(1) != y).sum())  # it broke some correct images
    tiered = apgd_t_by_rank(adv_model, x, y, "linf", 0.1, 10, APGD_T_STEPS)  # the product's check
    one = apgd_t_by_rank(adv_model, x, y, "linf", 0.1, 10, (100,))
    assert not (tiered & ~one).any()  # the first target is the same attack: more targets only reject more
