"""Fixed-step RK solvers: honest NFE counts, and measured convergence orders on gmm64.

The order is the least-squares slope of log err_rms against log NFE over step counts in the
asymptotic range (found by experiment; Euler on EDM/karras is pre-asymptotic below ~512 steps),
against a float64 dopri8 reference at rtol = atol = 1e-12 from the same x_init to the same t_min.
"""

from __future__ import annotations

import pytest
import torch

from helpers import err_rms, fit_order
from samplerbench.models import CountingDenoiser, Denoiser, ProbabilityFlowODE, load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid
from samplerbench.solvers.classical.adaptive import reference_solve

N_SAMPLES = 8
REF_TOL = 1e-12

# (model, grid) -> {solver: step counts in the asymptotic range}
CASES = {
    ("gmm64", "karras"): {"euler": (512, 1024, 2048), "heun": (128, 256, 512),
                          "midpoint": (128, 256, 512), "rk4": (128, 256, 512)},
    ("gmm64-rf", "uniform"): {"euler": (128, 256, 512), "heun": (64, 128, 256),
                              "midpoint": (64, 128, 256), "rk4": (64, 128, 256)},
}
ORDERS = {"euler": 1.0, "heun": 2.0, "midpoint": 2.0, "rk4": 4.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small batched linear algebra: one thread is faster, and immune to a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RecordingDenoiser(Denoiser):
    """Counts calls independently of CountingDenoiser and records every evaluation time."""

    def __init__(self, inner):
        super().__init__(inner.schedule, inner.data_shape)
        self.inner, self.calls, self.times = inner, 0, []

    def forward(self, x, t, **cond):
        self.calls += 1
        self.times.extend(torch.as_tensor(t, dtype=torch.float64).reshape(-1).tolist())
        return self.inner(x, t, **cond)


def x_init(den, grid, n=N_SAMPLES):
    z = initial_noise(list(range(n)), den.data_shape)
    return float(den.schedule.sigma(grid.t[0])) * z


# ---------------------------------------------------------------------------------------------
# NFE honesty
# ---------------------------------------------------------------------------------------------

# NFE on a final="zero" grid with N steps (N - 1 solver steps + 1 denoise step) and on t_min
ZERO_NFE = {"euler": lambda n: n, "ddim": lambda n: n, "heun": lambda n: 2 * n - 1,
            "midpoint": lambda n: 2 * n - 1, "ralston": lambda n: 2 * n - 1,
            "bosh3": lambda n: 3 * n - 2, "rk4": lambda n: 4 * n - 3}
TMIN_NFE = {"euler": lambda n: n, "ddim": lambda n: n, "heun": lambda n: 2 * n,
            "midpoint": lambda n: 2 * n, "ralston": lambda n: 2 * n,
            "bosh3": lambda n: 3 * n, "rk4": lambda n: 4 * n}


@pytest.mark.parametrize("solver", sorted(ZERO_NFE))
@pytest.mark.parametrize("model,grid", [("gmm2d", "karras"), ("gmm2d-rf", "uniform"),
                                        ("gmm2d-vp", "logsnr")])
def test_nfe_counted_by_wrapper(solver, model, grid):
    s = get_solver(solver)
    for final, table in (("zero", ZERO_NFE), ("t_min", TMIN_NFE)):
        for steps in (1, 2, 5, 18):
            den = load_model(model)
            rec = RecordingDenoiser(den)
            dyn = ProbabilityFlowODE(CountingDenoiser(rec))
            g = make_grid(grid, den.schedule, steps, final=final)
            sol = s.solve(dyn, x_init(den, g, 3), g)
            assert sol.status == "ok" and torch.isfinite(sol.x).all()
            want = table[solver](steps)
            assert sol.nfe == want == rec.calls, (solver, final, steps, sol.nfe, rec.calls)
            assert sol.forward_passes == want
            assert s.declared_nfe(g) == want
            assert sol.n_steps == steps
            # never at t = 0, never outside the grid's interval
            assert min(rec.times) >= g.t_end and max(rec.times) <= g.t_start


def test_edm_heun_18_steps_is_35_nfe():
    den = load_model("gmm64")
    g = make_grid("karras", den.schedule, 18)
    sol = get_solver("heun").solve(ProbabilityFlowODE(den), x_init(den, g, 2), g)
    assert sol.nfe == 35 and sol.n_steps == 18


def test_final_zero_is_denoise_of_t_min_solution():
    """final="zero" = the final="t_min" solve on the same points, then x <- D(x, t_min)."""
    den = load_model("gmm2d")
    gz = make_grid("karras", den.schedule, 10)
    gt = make_grid("karras", den.schedule, 9, final="t_min")
    assert torch.equal(gz.t[:-1], gt.t)
    x = x_init(den, gz, 4)
    for name in ("euler", "heun", "rk4"):
        s = get_solver(name)
        xz = s.solve(ProbabilityFlowODE(den), x, gz).x
        xt = s.solve(ProbabilityFlowODE(den), x, gt).x
        want = den(xt, torch.full((4,), den.schedule.t_min, dtype=torch.float64))
        assert torch.equal(xz, want)


# ---------------------------------------------------------------------------------------------
# convergence orders
# ---------------------------------------------------------------------------------------------

_PROBLEMS: dict = {}


def problem(model, grid):
    """(dynamics, x_init, reference at 1e-12, estimated reference error), cached per case."""
    key = (model, grid)
    if key not in _PROBLEMS:
        den = load_model(model)
        g = make_grid(grid, den.schedule, 8, final="t_min")
        dyn = ProbabilityFlowODE(den)
        x = x_init(den, g)
        ref = reference_solve(dyn, x, g, rtol=REF_TOL, atol=REF_TOL)
        looser = reference_solve(dyn, x, g, rtol=10 * REF_TOL, atol=10 * REF_TOL)
        assert ref.status == "ok"
        _PROBLEMS[key] = (dyn, x, ref.x, err_rms(looser.x, ref.x))
    return _PROBLEMS[key]


def measure(model, grid, solver, steps_list):
    dyn, x, ref, ref_err = problem(model, grid)
    s = get_solver(solver)
    nfe, err = [], []
    for steps in steps_list:
        g = make_grid(grid, dyn.schedule, steps, final="t_min")
        sol = s.solve(dyn, x, g)
        assert sol.nfe == steps * s.stages
        nfe.append(sol.nfe)
        err.append(err_rms(sol.x, ref))
    return nfe, err, ref_err


@pytest.mark.parametrize("model,grid,solver",
                         [(m, g, s) for (m, g), d in CASES.items() for s in d])
def test_measured_order(model, grid, solver):
    steps = CASES[(model, grid)][solver]
    nfe, err, ref_err = measure(model, grid, solver, steps)
    p = fit_order(nfe, err)
    expect = ORDERS[solver]
    # the finest error must be far above the reference's own error (|ref(1e-11) - ref(1e-12)|)
    assert min(err) > 100 * ref_err, (err, ref_err)
    assert all(e1 < e0 for e0, e1 in zip(err, err[1:])), err
    assert abs(p - expect) <= 0.3, (
        f"{solver} on {model}/{grid}: fitted order {p:.2f}, declared {expect}; "
        f"nfe={nfe} err={[f'{e:.3e}' for e in err]}")


def test_fit_order_helper():
    nfe = [16, 32, 64, 128]
    assert fit_order(nfe, [3.0 * n**-2.0 for n in nfe]) == pytest.approx(2.0, abs=1e-12)
    assert fit_order(nfe, [0.5 * n**-4.0 for n in nfe]) == pytest.approx(4.0, abs=1e-12)
    with pytest.raises(ValueError):
        fit_order([16], [1e-3])
    with pytest.raises(ValueError):
        fit_order([16, 32], [1e-3, 0.0])
