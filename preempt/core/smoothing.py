"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld and Kolter (2019) (paper Sections 3.6, 4.3).

The smoothed classifier is ``g(x) = argmax_c P(f(x + xi) = c)`` with ``xi ~ N(0, sigma^2 I)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm

ABSTAIN = -1


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on a binomial proportion with k successes in n."""
    if k == 0:
        return 0.0
    return float(beta_dist.ppf(alpha, k, n - k + 1))


@dataclass
class Smooth:
    """``Smooth(base_classifier, num_classes, sigma)``: the smoothed classifier ``g`` of a base ``f``.

    ``base_classifier`` maps ``[B, C, H, W]`` in [0, 1] to logits ``[B, num_classes]``.
    """

    base_classifier: torch.nn.Module
    num_classes: int
    sigma: float

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 1000) -> int:
        """PREDICT for one image ``x`` ``[C, H, W]``: the top class, or :data:`ABSTAIN`.

        With probability at least ``1 - alpha`` the returned class (when not abstaining) is
        ``g(x)``. Abstains when the two-sided binomial test of the top two counts is not
        significant at level ``alpha``.
        """
        counts = self._sample_noise(x, n, batch_size)
        top2 = counts.argsort()[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(n_a, n_a + n_b, p=0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 1000):
        """CERTIFY for one image ``x`` ``[C, H, W]``: ``(class, l2 radius)`` or ``(ABSTAIN, 0.0)``.

        The class is guessed from ``n0`` noisy samples, its probability ``pA`` is lower-bounded
        from ``n`` fresh samples by Clopper-Pearson at level ``alpha``; if ``pA_lower > 1/2`` then
        with probability at least ``1 - alpha`` ``g`` predicts that class within the l2 radius
        ``sigma * Phi^-1(pA_lower)``.
        """
        c_a = int(self._sample_noise(x, n0, batch_size).argmax())
        counts = self._sample_noise(x, n, batch_size)
        return self.radius_from_counts(c_a, int(counts[c_a]), n, alpha)

    def radius_from_counts(self, c_a: int, n_a: int, n: int, alpha: float):
        """The statistics of CERTIFY: ``(c_a, sigma * Phi^-1(pA_lower))`` or ``(ABSTAIN, 0.0)``."""
        p_a_lower = clopper_pearson_lower(n_a, n, alpha)
        if p_a_lower <= 0.5:
            return ABSTAIN, 0.0
        return c_a, float(self.sigma * norm.ppf(p_a_lower))

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        """Class counts of ``f(x + xi)`` over ``num`` Gaussian draws: shape ``[num_classes]``."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                b = min(batch_size, remaining)
                batch = x.unsqueeze(0).expand(b, *x.shape)
                noisy = batch + self.sigma * torch.randn_like(batch)
                pred = self.base_classifier(noisy).argmax(1)
                counts += np.bincount(pred.cpu().numpy(), minlength=self.num_classes)
                remaining -= b
        return counts
