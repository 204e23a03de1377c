import pytest
import torch
import torch.nn as nn
from scipy.stats import beta, norm

from preempt.core.smoothing import ABSTAIN, Smooth, clopper_pearson_lower


class Constant(nn.Module):
    """Always predicts class ``c`` (a base classifier whose smoothed version is certain)."""

    def __init__(self, c, k=3):
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x):
        return nn.functional.one_hot(torch.full((x.shape[0],), self.c), self.k).float()


class CoinFlip(nn.Module):
    """Class 0 or 1 by the sign of the noise at one pixel: P = 1/2 each, so CERTIFY must abstain."""

    def forward(self, x):
        cls = (x.flatten(1)[:, 0] > 0.5).long()
        return nn.functional.one_hot(cls, 3).float()


def test_certify_radius_is_sigma_times_inverse_normal_of_the_lower_bound():
    torch.manual_seed(0)
    smooth = Smooth(Constant(2), 3, sigma=0.5)
    n, alpha = 1000, 0.001
    c, r = smooth.certify(torch.full((1, 4, 4), 0.5), n0=10, n=n, alpha=alpha)
    p_lower = alpha ** (1 / n)  # Clopper-Pearson lower bound with n successes out of n
    assert c == 2
    assert r == pytest.approx(0.5 * norm.ppf(p_lower), rel=1e-6)


def test_radius_from_counts_uses_clopper_pearson():
    smooth = Smooth(Constant(0), 3, sigma=0.25)
    c, r = smooth.radius_from_counts(1, 900, 1000, 0.001)
    assert c == 1
    assert r == pytest.approx(0.25 * norm.ppf(beta.ppf(0.001, 900, 101)), rel=1e-9)
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0


def test_certify_and_predict_abstain_on_a_coin_flip():
    torch.manual_seed(0)
    smooth = Smooth(CoinFlip(), 3, sigma=1.0)
    x = torch.full((1, 2, 2), 0.5)
    assert smooth.certify(x, n0=100, n=1000, alpha=0.001) == (ABSTAIN, 0.0)
    assert smooth.predict(x, n=1000, alpha=0.001) == ABSTAIN


def test_predict_returns_the_majority_class():
    torch.manual_seed(0)
    assert Smooth(Constant(1), 3, sigma=0.25).predict(torch.zeros(1, 2, 2), n=100, alpha=0.001) == 1
