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
