"""The issue-16 samplers without an installable peer (ComfyUI's), on what they promise, float64:

* measured ODE order on gmm64 (``final="t_min"``, error against the dopri8 reference, steps
  doubled until the local slope settles: ``bench.conformance.measure_order``);
* the published update written out in k-diffusion's variables (xbar = x/alpha and
  sigmabar = sigma/alpha, through ``helpers.VEView``), here in a few lines each, against the
  solver, which works in x on any schedule: equal to rounding on EDM, VP and flow models;
* reduction to a known sampler where the method says so.

The samplers with a peer (dpm_fast, dpm_adaptive, pndm) are in test_samplers_catalogue_peers.py;
the registry-wide conformance test covers NFE honesty, determinism and batch invariance.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import VEView

from samplerbench.bench.conformance import ORDER_TOLERANCE, measure_order
from samplerbench.models.dynamics import ProbabilityFlowODE
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid

RTOL = 1e-10
_MODELS: dict = {}


def _model(name):
    if name not in _MODELS:
        _MODELS[name] = load_model(name)
    return _MODELS[name]


def _setup(model_name, steps, final="zero", grid="karras"):
    den = _model(model_name)
    sched = den.schedule
    g = make_grid(grid, sched, steps, final=final)
    x = float(sched.sigma(g.t_start)) * initial_noise([0, 1, 2], den.data_shape)
    sig = sched.ratio(g.t)
    if final == "zero":
        sig[-1] = 0.0
    return den, g, x, x / float(sched.alpha(g.t_start)), sig


def _solve(name, den, grid, x, **params):
    solver = get_solver(name, **params)
    sol = solver.solve(solver.make_dynamics(den), x.clone(), grid)
    assert sol.status == "ok"
    return sol


def _back(den, grid, xbar):
    """xbar at the grid's end back to x (alpha = 1 at t = 0)."""
    if grid.final == "zero":
        return xbar
    return xbar * float(den.schedule.alpha(grid.t_end))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _order(name, model="gmm64", max_steps=512, **params):
    solver = get_solver(name, **params)
    p, nfes, errs = measure_order(solver, _model(model), solver.order, n_samples=4,
                                  max_steps=max_steps)
    return p


# --- res_multistep ----------------------------------------------------------------------------

def res_multistep_ve(model, x, sigmas):
    """RES multistep as published (arXiv 2308.02157, ComfyUI's deterministic res_multistep), in
    xbar, sigmabar: lambda = -log sigmabar, first step and the step into 0 Euler."""
    old = None
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        d0 = model(x, s0 * x.new_ones(x.shape[0]))
        if s1 == 0 or old is None:
            x = x + (x - d0) / s0 * (s1 - s0)
        else:
            h = math.log(s0 / s1)
            c2 = -math.log(sigmas[i - 1] / s0) / h
            p1 = math.expm1(-h) / -h
            p2 = (p1 - 1.0) / -h
            x = math.exp(-h) * x + h * ((p1 - p2 / c2) * d0 + (p2 / c2) * old)
        old = d0
    return x


@pytest.mark.parametrize("model_name", ["gmm64", "gmm64-vp", "gmm64-rf"])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_res_multistep_is_the_published_update(model_name, final):
    den, grid, x, xbar, sig = _setup(model_name, 12, final)
    peer = VEView(den)
    ref = _back(den, grid, res_multistep_ve(peer, xbar.clone(), sig.tolist()))
    sol = _solve("res_multistep", den, grid, x)
    assert _rel(sol.x, ref) < RTOL, _rel(sol.x, ref)
    assert sol.nfe == peer.calls == 12


def test_res_multistep_first_step_is_ddim_and_it_is_not_dpmpp_2m():
    den, _, x, _, _ = _setup("gmm64-vp", 2, "t_min")
    # one positive step: no history -> the first-order (DDIM) step
    g1 = make_grid("karras", den.schedule, 1, final="t_min")
    assert _rel(_solve("res_multistep", den, g1, x).x, _solve("ddim", den, g1, x).x) < 1e-14
    # with history the correction weight is alpha_1 h phi_2(-h)/c2, not DPM-Solver++(2M)'s
    # alpha_1 (1 - e^{-h}) / (2r): the same to leading order, so two second-order methods whose
    # results approach each other as the steps shrink (ratio ~4 per doubling)
    diffs = []
    for steps in (32, 64):
        g = make_grid("karras", den.schedule, steps, final="t_min")
        diffs.append(_rel(_solve("res_multistep", den, g, x).x,
                          _solve("dpmpp_2m", den, g, x, lower_order_final=False).x))
    assert diffs[1] > 1e-8 and 3.0 < diffs[0] / diffs[1] < 5.0, diffs


def test_res_multistep_order():
    p = _order("res_multistep")
    assert abs(p - 2.0) <= ORDER_TOLERANCE, p


# --- heunpp2 ------------------------------------------------------------------------------------

def heunpp2_ve(model, x, sigmas):
    """Heun++ 2 as published (Carzit; ComfyUI sample_heunpp2, s_churn = 0) in xbar, sigmabar."""
    def d(xx, s):
        return (xx - model(xx, s * xx.new_ones(xx.shape[0]))) / s

    end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        d1 = d(x, s0)
        dt = s1 - s0
        if s1 == end:
            x = x + d1 * dt
            continue
        x2 = x + d1 * dt
        d2 = d(x2, s1)
        if sigmas[i + 2] == end:
            w2 = s1 / (2 * sigmas[0])
            x = x + ((1 - w2) * d1 + w2 * d2) * dt
        else:
            s2 = sigmas[i + 2]
            d3 = d(x2 + d2 * (s2 - s1), s2)
            w2, w3 = s1 / (3 * sigmas[0]), s2 / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d1 + w2 * d2 + w3 * d3) * dt
    return x


@pytest.mark.parametrize("model_name", ["gmm64", "gmm64-vp", "gmm64-rf"])
@pytest.mark.parametrize("final,steps", [("zero", 12), ("t_min", 12), ("zero", 2), ("t_min", 2)])
def test_heunpp2_is_the_published_update(model_name, final, steps):
    den, grid, x, xbar, sig = _setup(model_name, steps, final)
    peer = VEView(den)
    ref = _back(den, grid, heunpp2_ve(peer, xbar.clone(), sig.tolist()))
    solver = get_solver("heunpp2")
    sol = _solve("heunpp2", den, grid, x)
    assert _rel(sol.x, ref) < RTOL, _rel(sol.x, ref)
    assert sol.nfe == peer.calls == solver.declared_nfe(grid)


def test_heunpp2_order_and_its_euler_limit():
    # first order: the weights tend to (1, 0, 0) as sigmabar -> 0
    p = _order("heunpp2", max_steps=256)
    assert abs(p - 1.0) <= ORDER_TOLERANCE, p
    # from alpha = 0 (rectified flow at t = 1, sigmabar_0 = inf) every weight but w1 vanishes:
    # the result is DDIM's (at three calls per step)
    den, grid, x, _, _ = _setup("gmm64-rf", 8, "zero", grid="uniform")
    assert _rel(_solve("heunpp2", den, grid, x).x, _solve("ddim", den, grid, x).x) < 1e-12


# --- er_sde -----------------------------------------------------------------------------------

class _Draws:
    """Injected standard-normal draws, one per call, shared by the solver and the reference."""

    def __init__(self, shape, n, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.z = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
        self.i = 0

    def __call__(self, *_):
        self.i += 1
        return self.z[self.i - 1]


def er_sde_ve(model, x, sigmas, noise, S=lambda u: u * (math.exp(u ** 0.3) + 10.0)):
    """ER-SDE-Solver-3 as published (Cui et al. 2024; ComfyUI sample_er_sde) in xbar, sigmabar,
    the integrals by scipy's adaptive quadrature; the step into 0 is x0_hat."""
    from scipy.integrate import quad

    ds, dds = [], []
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        d0 = model(x, s0 * x.new_ones(x.shape[0]))
        if s1 == 0:
            return d0
        r = S(s1) / S(s0)
        x = r * x + (1 - r) * d0
        if i >= 1:
            dt = s1 - s0
            i0 = quad(lambda u: 1 / S(u), s1, s0, epsabs=0, epsrel=1e-13)[0]
            dd = (d0 - ds[-1]) / (s0 - sigmas[i - 1])
            x = x + (dt + i0 * S(s1)) * dd
            if i >= 2:
                i1 = quad(lambda u: (u - s0) / S(u), s1, s0, epsabs=0, epsrel=1e-13)[0]
                x = x + (dt ** 2 / 2 + i1 * S(s1)) * (dd - dds[-1]) / ((s0 - sigmas[i - 2]) / 2)
            dds.append(dd)
        x = x + noise() * max(s1 ** 2 - s0 ** 2 * r ** 2, 0.0) ** 0.5
        ds.append(d0)
    return x


@pytest.mark.parametrize("model_name", ["gmm64", "gmm64-vp", "gmm64-rf"])
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_er_sde_is_the_published_update(model_name, final):
    """Same draws: the solver adds alpha_1 sqrt(...) z in x, the reference sqrt(...) z in xbar."""
    den, grid, x, xbar, sig = _setup(model_name, 10, final)
    peer = VEView(den)
    ref = _back(den, grid, er_sde_ve(peer, xbar.clone(), sig.tolist(), _Draws(x.shape, 20)))
    solver = get_solver("er_sde")
    sol = solver.solve(solver.make_dynamics(den), x.clone(), grid, _Draws(x.shape, 20))
    assert _rel(sol.x, ref) < 1e-9, _rel(sol.x, ref)
    assert sol.nfe == peer.calls == 10


def _ode_errors(name, steps_list, **params):
    """err_rms at t_min against the dopri8 reference, the solver given (unused) fresh noise."""
    from helpers import err_rms

    from samplerbench.solvers import make_noise
    from samplerbench.solvers.classical.adaptive import reference_solve

    den = _model("gmm64")
    seeds = [0, 1, 2, 3]
    g0 = make_grid("karras", den.schedule, steps_list[0], final="t_min")
    x = float(den.schedule.sigma(g0.t_start)) * initial_noise(seeds, den.data_shape)
    ref = reference_solve(ProbabilityFlowODE(den), x, g0, 1e-12, 1e-12).x
    solver = get_solver(name, **params)
    errs = []
    for n in steps_list:
        g = make_grid("karras", den.schedule, n, final="t_min")
        noise = make_noise("fresh", seeds, den.data_shape, g)
        errs.append(err_rms(solver.solve(solver.make_dynamics(den), x, g, noise).x, ref))
    return errs


def test_er_sde_identity_scaler_is_a_second_order_ode_solver():
    """S(u) = u: the PF-ODE.  Third stage or not, order 2 (see the solver's docstring: D' is a
    backward difference, centred half a step back, and stage 3 does not correct it)."""
    from helpers import fit_order

    steps = [64, 128, 256, 512]
    for max_stage in (2, 3):
        errs = _ode_errors("er_sde", steps, noise_scaler="identity", max_stage=max_stage)
        p = fit_order(steps[-3:], errs[-3:])
        assert abs(p - 2.0) <= ORDER_TOLERANCE, (max_stage, p, errs)
    # max_stage 1 (and every first step) is DDIM
    den, grid, x, _, _ = _setup("gmm64-vp", 12, "zero")
    solver = get_solver("er_sde", noise_scaler="identity", max_stage=1)
    a = solver.solve(solver.make_dynamics(den), x.clone(), grid, _Draws(x.shape, 20)).x
    assert _rel(a, _solve("ddim", den, grid, x).x) < 1e-12


def test_er_sde_noise_has_the_marginal_scale():
    """One step from sigma_max: the injected noise is alpha_1 sqrt(sb_1^2 - sb_0^2 r^2) z with
    r = S(sb_1)/S(sb_0) (the extended SDE's marginal), on a VP model."""
    den = _model("gmm64-vp")
    grid = make_grid("karras", den.schedule, 1, final="t_min")
    x = float(den.schedule.sigma(grid.t_start)) * initial_noise([0, 1], den.data_shape)
    z = _Draws(x.shape, 1)
    noisy = get_solver("er_sde")
    a = noisy.solve(noisy.make_dynamics(den), x.clone(), grid, z).x
    z.i = 0
    quiet = get_solver("er_sde", s_noise=0.0)
    b = quiet.solve(quiet.make_dynamics(den), x.clone(), grid, z).x
    sb0, sb1 = (float(v) for v in den.schedule.ratio(grid.t))
    S = lambda u: u * (math.exp(u ** 0.3) + 10.0)  # noqa: E731
    scale = float(den.schedule.alpha(grid.t[1])) * math.sqrt(sb1 ** 2
                                                             - (sb0 * S(sb1) / S(sb0)) ** 2)
    assert torch.allclose(a - b, scale * z.z[0], rtol=1e-10, atol=1e-14)
