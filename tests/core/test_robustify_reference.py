"""Restructuring :func:`robustify` must not change what it computes: each fixed-seed case of
:mod:`tests.core.robustify_reference` gives the outputs recorded in ``data/robustify_reference.pt``."""

import pytest
import torch

from tests.core.robustify_reference import CASES, PATH, run_case

REFERENCE = torch.load(PATH)


@pytest.mark.parametrize("name", sorted(CASES))
def test_robustify_gives_the_recorded_outputs(name):
    got, want = run_case(name), REFERENCE[name]
    for key in ("label", "passes_per_image", "stopped_at"):
        assert torch.equal(got[key], want[key]), key
    for key in ("x_rob", "robust_loss", "history"):
        assert torch.allclose(got[key], want[key], atol=1e-6, rtol=0), (key, float((got[key] - want[key]).abs().max()))
