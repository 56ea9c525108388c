"""The issue-3 grids: exponential, polyexponential, quadratic, shift and list."""

from __future__ import annotations

import math

import pytest
import torch

from samplerbench.models.errors import UserError
from samplerbench.models.schedules import make_schedule
from samplerbench.solvers.grids import make_grid

SCHEDULES = ["edm", "rf", "vp-linear", "vp-cosine", "ve", "trig"]
NEW = ["exponential", "polyexponential", "quadratic", "shift"]


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_new_grids_are_valid(sched, name, final):
    s = make_schedule(sched)
    g = make_grid(name, s, 10, final=final)
    assert g.t.numel() == 11 and g.t.dtype == torch.float64
    assert (g.t[1:] < g.t[:-1]).all()
    assert g.t_end == pytest.approx(s.t_min, rel=1e-12)
    start = s.t_max if name in ("quadratic", "shift") else float(s.t_from_ratio(s.sigma_max))
    assert g.t_start == pytest.approx(start, rel=1e-12)


def test_exponential_is_logsnr_and_polyexponential_rho1():
    s = make_schedule("edm")
    e = make_grid("exponential", s, 12).t
    torch.testing.assert_close(e, make_grid("logsnr", s, 12).t, rtol=1e-13, atol=0)
    torch.testing.assert_close(e, make_grid("polyexponential", s, 12, rho=1.0).t, rtol=1e-13, atol=0)


def test_polyexponential_matches_kdiffusion_formula():
    s = make_schedule("edm")
    n, rho, smin, smax = 9, 2.0, 0.002, 80.0
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    expected = torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    torch.testing.assert_close(make_grid("polyexponential", s, n, rho=rho).t[:-1], expected,
                               rtol=1e-13, atol=0)


def test_shift_matches_sd3_time_shift_on_rf():
    s = make_schedule("rf")
    g = make_grid("shift", s, 8, shift=3.0).t[:-1]
    # inverting the shift gives a uniform grid
    u = g / (3.0 - 2.0 * g)
    d = u[:-1] - u[1:]
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), rtol=1e-10, atol=0)
    assert float(g[0]) == 1.0
    # shift = 1 is the uniform grid
    torch.testing.assert_close(make_grid("shift", s, 8, shift=1.0).t, make_grid("uniform", s, 8).t)


def test_quadratic_spacing():
    s = make_schedule("vp-linear")
    g = make_grid("quadratic", s, 5, final="t_min").t
    u = torch.sqrt((g - s.t_min) / (s.t_max - s.t_min))
    torch.testing.assert_close(u, torch.linspace(1, 0, 6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_list_grid_and_its_errors():
    s = make_schedule("edm")
    g = make_grid("list", s, 3, values=[80.0, 10.0, 1.0])
    assert g.t.tolist() == [80.0, 10.0, 1.0, 0.0] and g.params["values"] == [80.0, 10.0, 1.0]
    g = make_grid("list", make_schedule("rf"), 2, final="t_min", values=[80.0, 1.0, 0.01],
                  space="ratio")
    assert g.t.tolist() == pytest.approx([80 / 81, 0.5, 0.01 / 1.01], rel=1e-14)
    with pytest.raises(UserError, match="steps"):
        make_grid("list", s, 4, values=[80.0, 10.0, 1.0])
    with pytest.raises(UserError, match="values"):
        make_grid("list", s, 3, values=[80.0, 100.0, 1.0])
    with pytest.raises(UserError, match="values"):
        make_grid("list", s, 3)
    with pytest.raises(UserError, match="space"):
        make_grid("list", s, 3, values=[80.0, 10.0, 1.0], space="sigma")


@pytest.mark.parametrize("name,params", [("shift", {"shift": -1.0}), ("polyexponential", {"rho": 0}),
                                         ("shift", {"alpha": 2.0})])
def test_bad_grid_params(name, params):
    with pytest.raises(UserError):
        make_grid(name, make_schedule("rf"), 4, **params)
