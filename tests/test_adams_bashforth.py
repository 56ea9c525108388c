"""Adams-Bashforth in t: on the EDM schedule (alpha = 1, sigma = t) the PF-ODE velocity is the
eps prediction and t is sigma, so AB of order p is k-diffusion's LMS of order p."""

from __future__ import annotations

import pytest
import torch

from samplerbench.bench.conformance import check_solver
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_adams_bashforth_is_lms_on_edm(p):
    m = load_model("gmm64")
    g = make_grid("karras", m.schedule, 12)
    x = initial_noise(list(range(4)), m.data_shape) * g.t_start
    ab = get_solver("adams_bashforth", solver_order=p)
    lms = get_solver("lms", solver_order=p)
    a = ab.solve(ab.make_dynamics(m), x, g)
    b = lms.solve(lms.make_dynamics(m), x, g)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)
    assert a.nfe == b.nfe == 12


def test_adams_bashforth_differs_from_lms_on_vp():
    m = load_model("gmm64-vp")
    g = make_grid("karras", m.schedule, 12)
    x = initial_noise(list(range(4)), m.data_shape) * float(m.schedule.sigma(g.t_start))
    outs = [get_solver(n).solve(get_solver(n).make_dynamics(m), x, g).x for n in ("adams_bashforth", "lms")]
    assert float((outs[0] - outs[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("p", [2, 4])
def test_adams_bashforth_orders(p):
    rep = check_solver("adams_bashforth", {"solver_order": p})
    assert rep.passed, rep.format()


def test_bad_order():
    from samplerbench.models.errors import UserError

    with pytest.raises(UserError, match="solver_order"):
        get_solver("adams_bashforth", solver_order=5)
