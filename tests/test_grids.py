"""Time grids: point counts, float64, strict decrease, exact ends, the Karras formula, errors."""

from __future__ import annotations

import math

import pytest
import torch

from samplerbench.models.errors import UserError
from samplerbench.models.schedules import SCHEDULES, make_schedule
from samplerbench.solvers.grids import available_grids, make_grid

GRIDS = ("uniform", "karras", "logsnr")
NAMES = sorted(SCHEDULES)


def karras_formula(n, smin=0.002, smax=80.0, rho=7.0):
    """Karras et al. 2022, eq. 5: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


def test_builtin_grids_registered():
    assert set(GRIDS) <= set(available_grids())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("steps", (1, 2, 3, 10, 18, 257))
def test_grid_shape_order_and_ends(grid, name, steps):
    s = make_schedule(name)
    start = s.t_max if grid == "uniform" else float(s.t_from_ratio(s.sigma_max))
    for final in ("zero", "t_min"):
        g = make_grid(grid, s, steps, final=final)
        t = g.t
        assert t.dtype == torch.float64 and t.ndim == 1
        assert t.numel() == steps + 1 and g.steps == steps and g.final == final
        assert (t[1:] < t[:-1]).all(), f"{grid}/{name}/{steps}/{final} not strictly decreasing"
        assert torch.isfinite(t).all() and (t >= 0).all()
        assert float(t[0]) == pytest.approx(start, rel=1e-14) and g.t_start == float(t[0])
        assert float(t[0]) <= s.t_max
        if final == "zero":
            assert float(t[-1]) == 0.0
            if steps >= 2:
                assert float(t[-2]) == s.t_min      # exactly, not an ulp off
            assert g.t_end == float(t[-2])
        else:
            assert float(t[-1]) == s.t_min
            assert (t > 0).all() and g.t_end == s.t_min


@pytest.mark.parametrize("name", NAMES)
def test_grid_spacing(name):
    """uniform is uniform in t, karras in ratio^(1/7), logsnr in log-SNR."""
    s = make_schedule(name)
    n = 12
    t = make_grid("uniform", s, n, final="t_min").t
    d = t[:-1] - t[1:]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-12, atol=0)
    r = s.ratio(make_grid("karras", s, n, final="t_min").t) ** (1 / 7)
    d = r[:-1] - r[1:]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9, atol=0)
    lam = s.log_snr(make_grid("logsnr", s, n, final="t_min").t)
    d = lam[1:] - lam[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9, atol=0)


@pytest.mark.parametrize("steps", (2, 18, 40, 256))
def test_karras_edm_is_the_karras_formula(steps):
    s = make_schedule("edm")
    g = make_grid("karras", s, steps)               # final="zero": N sigmas then 0
    want = torch.cat([karras_formula(steps), torch.zeros(1, dtype=torch.float64)])
    assert torch.equal(g.t[1:-2], want[1:-2])       # bitwise in the interior
    assert float(g.t[0]) == 80.0 and float(g.t[-2]) == 0.002 and float(g.t[-1]) == 0.0
    # the formula's float ends are a few ulps off 80 and 0.002; the grid pins them exactly
    assert torch.allclose(g.t, want, rtol=1e-14, atol=0)
    gt = make_grid("karras", s, steps, final="t_min")
    assert torch.equal(gt.t[1:-1], karras_formula(steps + 1)[1:-1])
    assert float(gt.t[0]) == 80.0 and float(gt.t[-1]) == 0.002


def test_karras_edm_18_steps_values():
    """EDM's default sampler grid (18 steps, 35 NFE with Heun): known first and last values."""
    t = make_grid("karras", make_schedule("edm"), 18).t
    assert t.numel() == 19
    assert float(t[1]) == pytest.approx(57.58598472124816, rel=1e-14)
    assert float(t[-3]) == pytest.approx(0.0075280199627840785, rel=1e-14)


def test_karras_rho_param():
    s = make_schedule("edm")
    g = make_grid("karras", s, 10, rho=3.0)
    assert g.params["rho"] == 3.0
    assert torch.allclose(g.t[:-1], karras_formula(10, rho=3.0), rtol=1e-14, atol=0)


def test_rf_start_points():
    s = make_schedule("rf")
    for grid in ("karras", "logsnr"):
        t = make_grid(grid, s, 10).t
        assert float(t[0]) == pytest.approx(80 / 81, rel=1e-15)
        assert float(s.ratio(t[0])) == pytest.approx(80.0, rel=1e-12)
    assert float(make_grid("uniform", s, 10).t[0]) == 1.0
    assert float(make_grid("uniform", s, 1).t[0]) == 1.0
    assert float(make_grid("karras", s, 1).t[0]) == pytest.approx(80 / 81, rel=1e-15)


def test_logsnr_end_values():
    s = make_schedule("vp-linear")
    t = make_grid("logsnr", s, 7, final="t_min").t
    lam = s.log_snr(t)
    assert float(lam[0]) == pytest.approx(-2 * math.log(s.sigma_max), rel=1e-12)
    assert float(lam[-1]) == pytest.approx(float(s.log_snr(s.t_min)), rel=1e-12)


def test_user_t_min():
    s = make_schedule("edm")
    g = make_grid("karras", s, 8, t_min=0.05)
    assert float(g.t[-2]) == 0.05 and float(g.t[-1]) == 0.0 and g.params["t_min"] == 0.05
    g = make_grid("uniform", s, 8, final="t_min", t_min=0.05)
    assert float(g.t[-1]) == 0.05


@pytest.mark.parametrize("steps", (0, -3, 2.5, "8", True, None))
def test_bad_steps(steps):
    with pytest.raises(UserError, match="steps"):
        make_grid("karras", make_schedule("edm"), steps)


def test_unknown_grid_lists_choices():
    with pytest.raises(UserError) as exc:
        make_grid("karas", make_schedule("edm"), 8)
    msg = str(exc.value)
    assert "karas" in msg and all(g in msg for g in GRIDS)


def test_unknown_param_and_final():
    with pytest.raises(UserError) as exc:
        make_grid("karras", make_schedule("edm"), 8, sigma=3.0)
    assert "sigma" in str(exc.value) and "rho" in str(exc.value)
    with pytest.raises(UserError, match="rho"):
        make_grid("uniform", make_schedule("edm"), 8, rho=7.0)
    with pytest.raises(UserError) as exc:
        make_grid("uniform", make_schedule("edm"), 8, final="end")
    assert "end" in str(exc.value) and "t_min" in str(exc.value)
