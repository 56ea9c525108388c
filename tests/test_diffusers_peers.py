"""Cross-checks against diffusers' schedulers: the same algorithm on the same grid, the same x_init
and the same model, to 1e-4 relative (float64).

How the two are put on one problem.  diffusers' schedulers are discrete (1000 training steps,
linear betas); after ``set_timesteps(N)`` each one lists the noise levels it visits, as its
``sigmas`` (sigma/alpha) or its ``alphas_cumprod`` at ``timesteps``.  Those values define the grid:
t_i = t_from_ratio(sigma_i) under our vp-linear schedule, so alpha(t_i), sigma(t_i) are the
scheduler's own, and a final sigma of 0 (or DDIM's final alpha_cumprod = 1) is our ``final="zero"``
denoise step.  The scheduler is driven with eps_hat = (x - alpha x0_hat) / sigma from the analytic
GMM denoiser at (t_i, x).  Its sigma / alpha_cumprod tables are cast to float64 after
``set_timesteps`` (the grid values are unchanged), so it computes its coefficients in float64:
DDIM, UniPC and DEIS then agree to ~1e-14; DPMSolverMultistep upcasts the sample to float32 in
``step`` and agrees to ~1e-6.

Deliberate differences (also in the solver docstrings):
- ``unipc_bh1``: diffusers' final step into sigma = 0 returns NaN for bh1 (B(h) = -h = -inf times a
  zero correction term).  Its state before that step, followed by the denoise step -- which is what
  that step returns for bh2 -- is compared.
- ``lower_order_final`` of UniPC only acts on grids that end at t = 0.  On ``final="t_min"`` grids
  we equal diffusers with final_sigmas_type="sigma_min" and lower_order_final=False (with True,
  diffusers takes the last step at first order, which caps its global order at 2).
- DEIS in diffusers always ends at the first training noise level (our ``final="t_min"``).
- diffusers' ``IPNDMScheduler`` is a different method (Adams-Bashforth in the angle of the
  v-diffusion parameterisation), so ``ipndm`` is checked against its published formulas in
  test_multistep_orders.py instead.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (pip install -e '.[test]')")

from samplerbench.models.zoo import load_model  # noqa: E402
from samplerbench.solvers import Grid, available_solvers, get_solver, initial_noise  # noqa: E402

REL_TOL = 1e-4

# diffusers' schedulers pass torch tensors through numpy (NumPy 2 deprecation warnings)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


@pytest.fixture(scope="module")
def den():
    return load_model("gmm64-vp")


def _grid(den, ratios, final: str) -> Grid:
    t = den.schedule.t_from_ratio(torch.as_tensor(ratios).to(torch.float64))
    if final == "zero":
        t = torch.cat([t, t.new_zeros(1)])
    return Grid(t=t, name="list", final=final)


def _sigma_grid(den, scheduler):
    """Grid of a sigma-table scheduler (UniPC, DPMSolverMultistep, DEIS); its table to float64."""
    scheduler.sigmas = scheduler.sigmas.to(torch.float64)
    sig = scheduler.sigmas
    if float(sig[-1]) == 0.0:
        return _grid(den, sig[:-1], "zero")
    return _grid(den, sig, "t_min")


def _drive(scheduler, den, grid, x, n_steps=None):
    """Run ``n_steps`` (default all) scheduler steps with eps_hat from ``den`` at the grid times."""
    sched = den.schedule
    for i, ts in enumerate(scheduler.timesteps[:n_steps]):
        t = grid.t[i]
        x0 = den(x, t.expand(x.shape[0]))
        eps = (x - float(sched.alpha(t)) * x0) / float(sched.sigma(t))
        x = scheduler.step(eps, ts, x).prev_sample
    return x


def _ours(name, den, grid, x, **params):
    solver = get_solver(name, **params)
    sol = solver.solve(solver.make_dynamics(den), x, grid)
    assert sol.status == "ok" and sol.nfe == solver.declared_nfe(grid)
    return sol.x


def _x_init(den, grid):
    return float(den.schedule.sigma(grid.t[0])) * initial_noise([0, 1, 2, 3], den.data_shape)


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [10, 25])
def test_ddim(den, steps):
    # set_alpha_to_one=True (default): the last step goes to alpha_cumprod = 1, i.e. x0_hat
    s = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    s.set_timesteps(steps)
    s.alphas_cumprod = s.alphas_cumprod.to(torch.float64)
    s.final_alpha_cumprod = s.final_alpha_cumprod.to(torch.float64)
    ac = s.alphas_cumprod[s.timesteps]
    grid = _grid(den, ((1 - ac) / ac).sqrt(), "zero")
    x = _x_init(den, grid)
    assert _rel(_drive(s, den, grid, x), _ours("ddim", den, grid, x)) < REL_TOL


@pytest.mark.parametrize("steps", [10, 25])
def test_dpmpp_2m(den, steps):
    if "dpmpp_2m" not in available_solvers():
        pytest.skip("dpmpp_2m is not registered (solvers/diffusion/dpmpp.py)")
    s = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    s.set_timesteps(steps)
    grid = _sigma_grid(den, s)
    assert grid.final == "zero"
    x = _x_init(den, grid)
    assert _rel(_drive(s, den, grid, x), _ours("dpmpp_2m", den, grid, x)) < REL_TOL


@pytest.mark.parametrize("steps,order", [(10, 2), (25, 2), (10, 1), (10, 3), (25, 3)])
def test_unipc_bh2(den, steps, order):
    s = diffusers.UniPCMultistepScheduler(solver_type="bh2", solver_order=order)
    s.set_timesteps(steps)
    grid = _sigma_grid(den, s)
    assert grid.final == "zero"
    x = _x_init(den, grid)
    ours = _ours("unipc_bh2", den, grid, x, solver_order=order)
    assert _rel(_drive(s, den, grid, x), ours) < REL_TOL


@pytest.mark.parametrize("steps,order", [(10, 2), (25, 2), (10, 3)])
def test_unipc_bh1(den, steps, order):
    s = diffusers.UniPCMultistepScheduler(solver_type="bh1", solver_order=order)
    s.set_timesteps(steps)
    grid = _sigma_grid(den, s)
    x = _x_init(den, grid)
    # diffusers' own last step is NaN for bh1 (see module docstring): stop before it, denoise
    x_pre = _drive(s, den, grid, x, n_steps=steps - 1)
    theirs = den(x_pre, grid.t[steps - 1].expand(x.shape[0]))
    ours = _ours("unipc_bh1", den, grid, x, solver_order=order)
    assert _rel(theirs, ours) < REL_TOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_on_t_min_grids(den, variant):
    s = diffusers.UniPCMultistepScheduler(solver_type=variant, final_sigmas_type="sigma_min",
                                          lower_order_final=False)
    s.set_timesteps(10)
    grid = _sigma_grid(den, s)
    assert grid.final == "t_min"
    x = _x_init(den, grid)
    assert _rel(_drive(s, den, grid, x), _ours(f"unipc_{variant}", den, grid, x)) < REL_TOL


@pytest.mark.parametrize("steps,order,lower_order_final",
                         [(10, 2, True), (25, 2, True), (10, 3, True), (25, 3, True),
                          (10, 3, False)])
def test_deis(den, steps, order, lower_order_final):
    s = diffusers.DEISMultistepScheduler(solver_order=order, lower_order_final=lower_order_final)
    s.set_timesteps(steps)
    grid = _sigma_grid(den, s)
    assert grid.final == "t_min"
    x = _x_init(den, grid)
    ours = _ours("deis", den, grid, x, solver_order=order, lower_order_final=lower_order_final)
    assert _rel(_drive(s, den, grid, x), ours) < REL_TOL


def test_defaults_match_diffusers_defaults():
    """The registered defaults are the schedulers' defaults (solver order, lower_order_final)."""
    u, d = diffusers.UniPCMultistepScheduler(), diffusers.DEISMultistepScheduler()
    assert u.config.solver_type == "bh2" and u.config.predict_x0 and not u.config.disable_corrector
    for name in ("unipc_bh1", "unipc_bh2"):
        p = get_solver(name).params()
        assert p == {"solver_order": u.config.solver_order,
                     "lower_order_final": u.config.lower_order_final}
    assert get_solver("deis").params() == {"solver_order": d.config.solver_order,
                                           "lower_order_final": d.config.lower_order_final}
