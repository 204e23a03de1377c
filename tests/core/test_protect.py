"""The per-image verification of the protection report (core/protect.py)."""

import pytest
import torch

from preempt.core.protect import VERIFY_ATTACKS, verify_robust
from preempt.core.threat import ThreatModel


def test_strong_verification_is_stricter_than_pgd(adv_model, fmnist_test):
    """The default check (PGD-20 x 5, then APGD-CE and APGD-T) passes only images the PGD check passes,
    never a misclassified one, and on a weakly trained model it rejects images PGD alone would pass."""
    x, y = fmnist_test
    x, y = x[:200], y[:200]
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(0)
    weak = verify_robust(adv_model, x, y, threat, attack="pgd")
    torch.manual_seed(0)
    strong = verify_robust(adv_model, x, y, threat, attack="apgd")
    with torch.no_grad():
        correct = adv_model(x).argmax(1) == y
    assert not (strong & ~weak).any()
    assert not (strong & ~correct).any()
    assert int(weak.sum()) - int(strong.sum()) >= 2, (int(weak.sum()), int(strong.sum()))


def test_unknown_verification_attack_is_refused(adv_model, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(ValueError, match="verify must be one of"):
        verify_robust(adv_model, x[:2], y[:2], ThreatModel("linf", 0.1), attack="fgsm")
    assert set(VERIFY_ATTACKS) == {"pgd", "apgd"}
