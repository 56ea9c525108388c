"""Adaptive solvers (torchdiffeq, scipy): tolerance is the budget, NFE is counted (rejected
steps included), accuracy improves as the tolerance tightens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samplerbench.bench.metrics import per_sample_rms
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid
from samplerbench.solvers.classical.adaptive import reference_solve
from samplerbench.solvers.registry import available_solvers, solver_class

ADAPTIVE = [n for n in available_solvers() if solver_class(n).adaptive]


@pytest.fixture(scope="module")
def setup():
    m = load_model("gmm2d")
    g = make_grid("karras", m.schedule, 8)
    x = initial_noise(list(range(6)), m.data_shape) * g.t_start
    ref = reference_solve(get_solver("dopri8").make_dynamics(m), x, g, 1e-12, 1e-12).x
    return m, g, x, ref


def test_the_adaptive_family_is_registered():
    assert {"dopri5", "dopri8", "bosh3_adaptive", "adaptive_heun", "scipy_rk45", "scipy_dop853",
            "scipy_lsoda", "scipy_radau", "scipy_bdf"} <= set(ADAPTIVE)
    for n in ADAPTIVE:
        assert solver_class(n).stages is None


@pytest.mark.parametrize("name", ADAPTIVE)
def test_tolerance_buys_accuracy(name, setup):
    m, g, x, ref = setup
    errs, nfes = [], []
    for tol in (1e-3, 1e-7):
        s = get_solver(name, rtol=tol, atol=tol)
        sol = s.solve(s.make_dynamics(m), x, g)
        assert sol.status == "ok"
        errs.append(float(per_sample_rms(sol.x, ref).mean()))
        nfes.append(sol.nfe)
    assert errs[1] < 0.05 * errs[0], errs
    assert errs[1] < 1e-4
    assert nfes[1] > nfes[0]


@pytest.mark.parametrize("method", ["RK45", "DOP853", "LSODA"])
def test_scipy_nfe_is_counted_including_rejected_steps(method, setup):
    """Our counter equals scipy's own nfev (plus the final denoise step)."""
    from scipy.integrate import solve_ivp

    m, g, x, _ = setup
    s = get_solver("scipy_" + method.lower(), rtol=1e-6, atol=1e-6)
    dyn = s.make_dynamics(m)
    sol = s.solve(dyn, x, g)

    def fun(t, y):
        return dyn.velocity(float(t), torch.from_numpy(y).reshape(x.shape)).reshape(-1).numpy()

    res = solve_ivp(fun, (g.t_start, g.t_end), x.reshape(-1).numpy(), method=method,
                    rtol=1e-6, atol=1e-6)
    assert sol.nfe == res.nfev + 1
    np.testing.assert_allclose(sol.x.numpy(), dyn.denoise(g.t_end, torch.from_numpy(
        res.y[:, -1].copy()).reshape(x.shape)).numpy(), rtol=1e-12, atol=1e-12)


def test_torchdiffeq_nfe_matches_its_own_count(setup):
    from torchdiffeq import odeint

    m, g, x, _ = setup
    s = get_solver("dopri5", rtol=1e-5, atol=1e-5)
    sol = s.solve(s.make_dynamics(m), x, g)
    calls = []
    dyn = s.make_dynamics(m)

    def f(t, y):
        calls.append(float(t))
        return dyn.velocity(t, y)

    ts = torch.tensor([g.t_start, g.t_end], dtype=torch.float64)
    odeint(f, x, ts, rtol=1e-5, atol=1e-5, method="dopri5", options={"step_t": ts})
    assert sol.nfe == len(calls) + 1
    # never evaluated outside [t_min, t_max]
    assert min(calls) >= g.t_end - 1e-12 and max(calls) <= g.t_start + 1e-12


def test_bad_tolerance_is_named():
    from samplerbench.models.errors import UserError

    with pytest.raises(UserError, match="rtol"):
        get_solver("dopri5", rtol=0.0)
