"""Schedules: inverses round trip, exact derivatives, VP identity, monotonicity (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import autograd_derivative
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import SCHEDULES, make_schedule

NAMES = sorted(SCHEDULES)
VP_NAMES = ("vp-linear", "vp-cosine", "trig")   # alpha^2 + sigma^2 = 1


def interior_times(s, n=257) -> torch.Tensor:
    """Points strictly inside (t_min, t_max): uniform in t plus geometric near t_min."""
    lo, hi = s.t_min, s.t_max
    uni = torch.linspace(lo, hi, n, dtype=torch.float64)[1:-1]
    geo = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)[1:-1]
    t = torch.cat([uni, geo]).sort().values
    return t[(t > lo) & (t < hi)]


def test_all_six_schedules_registered():
    assert set(SCHEDULES) == {"vp-linear", "vp-cosine", "ve", "edm", "rf", "trig"}


@pytest.mark.parametrize("name", NAMES)
def test_log_snr_round_trip(name):
    s = make_schedule(name)
    t = interior_times(s)
    back = s.t_from_log_snr(s.log_snr(t))
    assert back.dtype == torch.float64
    rel = ((back - t) / t).abs().max().item()
    assert rel < 1e-10, f"{name}: t -> log_snr -> t relative error {rel:.3e}"


@pytest.mark.parametrize("name", NAMES)
def test_ratio_round_trip(name):
    s = make_schedule(name)
    t = interior_times(s)
    back = s.t_from_ratio(s.ratio(t))
    rel = ((back - t) / t).abs().max().item()
    assert rel < 1e-10, f"{name}: t -> ratio -> t relative error {rel:.3e}"
    # and the other way round, ratio -> t -> ratio, over the ratio range of the interval
    r = torch.logspace(math.log10(s.sigma_min), math.log10(s.sigma_max), 101, dtype=torch.float64)
    r_back = s.ratio(s.t_from_ratio(r))
    assert ((r_back - r) / r).abs().max().item() < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_endpoints(name):
    s = make_schedule(name)
    assert 0 < s.t_min < s.t_max
    assert float(s.ratio(s.t_min)) == pytest.approx(s.sigma_min, rel=1e-12)
    assert math.isfinite(s.sigma_max) and s.sigma_max > s.sigma_min
    r_max = float(s.ratio(s.t_max))
    if math.isfinite(r_max):
        assert r_max == pytest.approx(s.sigma_max, rel=1e-12)
    else:
        # alpha(t_max) = 0 exactly (rf, trig at t = 1); ratio grids start where ratio = sigma_max
        assert name in ("rf", "trig") and s.t_max == 1.0
        assert float(s.alpha(s.t_max)) == 0.0
        t_start = float(s.t_from_ratio(s.sigma_max))
        assert s.t_min < t_start < s.t_max
        assert float(s.ratio(t_start)) == pytest.approx(s.sigma_max, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_autograd(name):
    s = make_schedule(name)
    t = interior_times(s, n=65)
    for fn, dfn in ((s.alpha, s.d_alpha), (s.sigma, s.d_sigma)):
        ad = autograd_derivative(fn, t)
        an = dfn(t)
        scale = ad.abs().clamp(min=1.0)
        err = ((an - ad).abs() / scale).max().item()
        assert err < 1e-12, f"{name}.{dfn.__name__}: max scaled error {err:.3e}"
    # d/dt log(sigma / alpha) > 0 and equal to its autograd derivative
    dlr = s.d_log_ratio(t)
    ad = autograd_derivative(lambda u: torch.log(s.sigma(u)) - torch.log(s.alpha(u)), t)
    assert (dlr > 0).all()
    assert ((dlr - ad).abs() / ad.abs()).max().item() < 1e-10


@pytest.mark.parametrize("name", VP_NAMES)
def test_variance_preserving(name):
    s = make_schedule(name)
    t = torch.cat([interior_times(s), torch.tensor([s.t_min, s.t_max], dtype=torch.float64)])
    dev = (s.alpha(t) ** 2 + s.sigma(t) ** 2 - 1.0).abs().max().item()
    assert dev < 1e-14, f"{name}: |alpha^2 + sigma^2 - 1| up to {dev:.3e}"
    # and the derivative identity alpha alpha' + sigma sigma' = 0
    d = (s.alpha(t) * s.d_alpha(t) + s.sigma(t) * s.d_sigma(t)).abs().max().item()
    assert d < 1e-12


@pytest.mark.parametrize("name", ("ve", "edm"))
def test_variance_exploding_alpha_one(name):
    s = make_schedule(name)
    t = interior_times(s)
    assert torch.equal(s.alpha(t), torch.ones_like(t))
    assert torch.equal(s.d_alpha(t), torch.zeros_like(t))


def test_closed_forms():
    t = torch.tensor([0.01, 0.3, 0.7, 0.99], dtype=torch.float64)
    edm = make_schedule("edm")
    assert torch.equal(edm.sigma(t), t)
    rf = make_schedule("rf")
    assert torch.equal(rf.alpha(t), 1 - t) and torch.equal(rf.sigma(t), t)
    assert rf.t_min == pytest.approx(0.002 / 1.002, rel=1e-14)
    assert float(rf.t_from_ratio(torch.tensor(math.inf))) == 1.0
    tr = make_schedule("trig")
    assert torch.allclose(tr.ratio(t), torch.tan(0.5 * math.pi * t), rtol=1e-13, atol=0)
    ve = make_schedule("ve")
    assert float(ve.sigma(0.0)) == pytest.approx(0.01, rel=1e-14)
    assert float(ve.sigma(1.0)) == pytest.approx(50.0, rel=1e-14)
    vp = make_schedule("vp-linear")
    # log alpha(1) = -(20 - 0.1)/4 - 0.1/2
    assert float(torch.log(vp.alpha(1.0))) == pytest.approx(-(19.9 / 4 + 0.05), rel=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_monotone(name):
    s = make_schedule(name)
    t = interior_times(s)
    r = s.ratio(t)
    assert (r[1:] > r[:-1]).all(), f"{name}: ratio not strictly increasing"
    lam = s.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    assert float(s.log_snr(s.t_min)) > float(s.log_snr(s.t_max))
    assert math.isfinite(float(s.log_snr(s.t_min)))


def test_make_schedule_errors():
    with pytest.raises(UserError, match="vp-cosine"):
        make_schedule("nope")
    with pytest.raises(UserError, match="bogus"):
        make_schedule("edm", bogus=1.0)
