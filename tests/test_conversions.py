"""Prediction-type conversions: every pair round trips; velocity is d/dt of x_t (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from samplerbench.models.conversions import PREDICTIONS, expand_like, from_x0, to_x0
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import SCHEDULES, make_schedule

NAMES = sorted(SCHEDULES)
SHAPE = (6, 3, 4, 4)


def sample_times(s) -> torch.Tensor:
    """Per-sample times inside (t_min, t_max), one per batch row, spread over the interval."""
    lo, hi = math.log(s.t_min), math.log(s.t_max)
    u = torch.tensor([0.02, 0.2, 0.4, 0.6, 0.8, 0.97], dtype=torch.float64)
    return torch.exp(lo + u * (hi - lo))


def make_case(name, seed=0):
    s = make_schedule(name)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = sample_times(s)
    a, sg, da, ds = (expand_like(c, x0) for c in s.coefficients(t))
    x = a * x0 + sg * eps
    return s, t, x0, eps, x, (a, sg, da, ds), g


def close(got, want, rtol=1e-9):
    err = ((got - want).abs() / (want.abs() + 1.0)).max().item()
    assert err < rtol, f"max scaled error {err:.3e}"


@pytest.mark.parametrize("name", NAMES)
def test_from_x0_matches_definitions(name):
    s, t, x0, eps, x, (a, sg, da, ds), _ = make_case(name)
    close(from_x0("x0", x0, x, a, sg, da, ds), x0, 1e-15)
    close(from_x0("eps", x0, x, a, sg, da, ds), eps)
    close(from_x0("score", x0, x, a, sg, da, ds), -eps / sg)
    close(from_x0("v", x0, x, a, sg, da, ds), a * eps - sg * x0)
    close(from_x0("velocity", x0, x, a, sg, da, ds), da * x0 + ds * eps)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pred", PREDICTIONS)
def test_single_type_round_trips(name, pred):
    s, t, x0, eps, x, coef, g = make_case(name)
    # x0 -> pred -> x0
    out = from_x0(pred, x0, x, *coef)
    close(to_x0(pred, out, x, *coef), x0)
    # arbitrary pred output (not consistent with x0) -> x0 -> pred
    out = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    close(from_x0(pred, to_x0(pred, out, x, *coef), x, *coef), out)


@pytest.mark.parametrize("name", NAMES)
def test_every_pair_round_trips(name):
    s, t, x0, eps, x, coef, g = make_case(name, seed=1)
    for p in PREDICTIONS:
        out_p = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        for q in PREDICTIONS:
            out_q = from_x0(q, to_x0(p, out_p, x, *coef), x, *coef)
            back = from_x0(p, to_x0(q, out_q, x, *coef), x, *coef)
            err = ((back - out_p).abs() / (out_p.abs() + 1.0)).max().item()
            assert err < 1e-9, f"{name}: {p} -> {q} -> {p} error {err:.3e}"


@pytest.mark.parametrize("name", NAMES)
def test_velocity_is_time_derivative(name):
    """u = alpha' x0 + sigma' eps is d/dt of x_t = alpha(t) x0 + sigma(t) eps at fixed (x0, eps)."""
    s, t, x0, eps, x, coef, _ = make_case(name, seed=2)
    u = from_x0("velocity", x0, x, *coef)

    def x_of_t(tt):
        return expand_like(s.alpha(tt), x0) * x0 + expand_like(s.sigma(tt), x0) * eps

    # forward-mode autograd along dt = 1 per sample: exact up to rounding
    _, jvp = torch.autograd.functional.jvp(x_of_t, t, torch.ones_like(t))
    close(u, jvp, 1e-12)
    # central finite difference with a per-sample step; O(h^2) truncation
    h = 1e-5 * t
    fd = (x_of_t(t + h) - x_of_t(t - h)) / expand_like(2 * h, x0)
    close(u, fd, 1e-6)


def test_trig_v_is_angular_velocity():
    """For alpha = cos(phi), sigma = sin(phi), phi = pi t / 2: v = dx/dphi = velocity / (pi/2)."""
    s, t, x0, eps, x, coef, _ = make_case("trig", seed=3)
    v = from_x0("v", x0, x, *coef)
    u = from_x0("velocity", x0, x, *coef)
    close(v, u / (0.5 * math.pi), 1e-13)


def test_expand_like_and_unknown_prediction():
    x = torch.zeros(3, 2, 5, dtype=torch.float64)
    assert expand_like(torch.ones(3), x).shape == (3, 1, 1)
    assert expand_like(torch.tensor(2.0), x).shape == ()
    a = torch.ones(3, 1, 1, dtype=torch.float64)
    with pytest.raises(UserError, match="velocity"):
        to_x0("epsilon", x, x, a, a)
    with pytest.raises(UserError, match="epsilon"):
        from_x0("epsilon", x, x, a, a)
