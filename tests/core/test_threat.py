import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from preempt.core.threat import Geometry, ThreatModel, flat_norm

TOL = 1e-5
images = arrays(np.float32, (2, 1, 4, 4), elements=st.floats(-0.5, 1.5, width=32))
centers = arrays(np.float32, (2, 1, 4, 4), elements=st.floats(0, 1, width=32))
radii = st.floats(0.001, 3.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@settings(max_examples=200, deadline=None)
@given(x=images, c=centers, r=radii)
def test_projection_lands_in_ball_and_box(norm, x, c, r):
    g = Geometry(norm)
    p = g.project(torch.from_numpy(x), torch.from_numpy(c), r)
    assert (p >= 0).all() and (p <= 1).all()
    assert (flat_norm(p - torch.from_numpy(c), norm) <= r * (1 + TOL) + TOL).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@settings(max_examples=100, deadline=None)
@given(c=centers, r=radii)
def test_projection_is_identity_inside(norm, c, r):
    """A point already in the ball and the box is not moved."""
    g = Geometry(norm)
    center = torch.from_numpy(c)
    inside = g.random_in_ball(center, r)
    assert torch.allclose(g.project(inside, center, r), inside, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@settings(max_examples=200, deadline=None)
@given(c=centers, r=radii, seed=st.integers(0, 2**31 - 1))
def test_random_start_in_ball_and_box(norm, c, r, seed):
    torch.manual_seed(seed)
    center = torch.from_numpy(c)
    p = Geometry(norm).random_in_ball(center, r)
    assert (p >= 0).all() and (p <= 1).all()
    assert (flat_norm(p - center, norm) <= r * (1 + TOL) + TOL).all()


def test_l2_random_start_is_uniform_in_ball():
    """Uniform in a d-ball means P(||eta|| <= t r) = t^d; check at d = 3 on 20000 draws."""
    torch.manual_seed(0)
    center = torch.full((20000, 3), 0.5)
    r = 0.4
    norms = flat_norm(Geometry("l2").random_in_ball(center, r) - center, "l2") / r
    for t in (0.5, 0.8, 0.95):
        assert abs(float((norms <= t).float().mean()) - t ** 3) < 0.015
    # and the direction is isotropic: each coordinate's mean is ~0
    d = Geometry("l2").random_in_ball(center, r) - center
    assert d.mean(0).abs().max() < 0.01


def test_linf_random_start_fills_the_box():
    torch.manual_seed(0)
    center = torch.full((5000, 10), 0.5)
    d = Geometry("linf").random_in_ball(center, 0.2) - center
    assert d.abs().max() <= 0.2 + 1e-6
    assert abs(float((d.abs() <= 0.1).float().mean()) - 0.5) < 0.02


def test_steps_have_the_right_size():
    g = torch.randn(3, 1, 5, 5)
    x = torch.zeros_like(g)
    assert torch.allclose(flat_norm(Geometry("l2").step(x, g, 0.3), "l2"), torch.full((3,), 0.3))
    assert torch.equal(Geometry("linf").step(x, g, 0.1), 0.1 * g.sign())


def test_threat_model_validates():
    assert ThreatModel("l2", 0.5).delta == 0.5
    for bad in (dict(norm="l1"), dict(epsilon=-1.0), dict(epsilon=math.nan), dict(delta=-0.1)):
        with pytest.raises(ValueError):
            ThreatModel(**{"norm": "linf", "epsilon": 0.1, **bad})
