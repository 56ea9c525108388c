"""The fixed-step solvers' hot-path helpers (issue 3): fused linear combinations, schedule scalars
cached per solve, pure-Python Lagrange weights and small linear solves.  Each is checked against
the straightforward computation it replaces."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P

from samplerbench.models.dynamics import ProbabilityFlowODE
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid
from samplerbench.solvers.diffusion.fused import lam, lincomb, ratio
from samplerbench.solvers.diffusion.lagrange import basis_integrals
from samplerbench.solvers.diffusion.unipc import _solve


def test_lincomb_matches_the_plain_sum_and_leaves_inputs_alone():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    copies = [t.clone() for t in ts]
    for cs in ([0.3, -1.2, 2.0, 0.5], [1.0, -1.2, 2.0, 0.5], [1.0], [-0.7]):
        terms = list(zip(cs, ts))
        want = sum(c * t for c, t in terms)
        got = lincomb(*terms)
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
        assert all(got is not t for t in ts)
    for t, c in zip(ts, copies):
        assert torch.equal(t, c)


@pytest.mark.parametrize("model", ["gmm64", "gmm64-vp", "gmm64-rf"])
def test_primed_scalars_match_one_at_a_time(model):
    den = load_model(model)
    grid = make_grid("karras", den.schedule, 12)
    ts = grid.t.tolist()
    dyn = ProbabilityFlowODE(den)
    dyn.prime(ts)
    for t in ts:
        ref = [float(c) for c in den.schedule.coefficients(torch.tensor(t, dtype=torch.float64))]
        got = dyn.scalars(t)
        for g, r in zip(got, ref):
            assert g == pytest.approx(r, rel=1e-15, abs=1e-300)
        if t > 0:
            assert ratio(dyn, t) == pytest.approx(float(den.schedule.ratio(t)), rel=1e-15)
            assert lam(dyn, t) == pytest.approx(-math.log(float(den.schedule.ratio(t))), rel=1e-14)
    assert lam(dyn, 0.0) == math.inf


@pytest.mark.parametrize("model", ["gmm64", "gmm64-vp", "gmm64-rf"])
def test_fast_velocity_and_eps_match_the_conversion_formulas(model):
    den = load_model(model)
    dyn = ProbabilityFlowODE(den)
    x = 3.0 * initial_noise([0, 1], den.data_shape)
    for t in (den.schedule.t_max, 0.5 * (den.schedule.t_min + den.schedule.t_max),
              den.schedule.t_min):
        x0 = den(x, torch.full((2,), t, dtype=torch.float64))
        a, s, da, ds = (float(c) for c in den.schedule.coefficients(torch.tensor(t, dtype=torch.float64)))
        eps = (x - a * x0) / s
        # rounding differs per element: compare to the size of the terms that are combined
        e_scale = float((x.abs().max() + (a * x0).abs().max()) / s)
        v_scale = float((da * x0).abs().max()) + abs(ds) * e_scale
        for got, want, scale in ((dyn.velocity(t, x), da * x0 + ds * eps, v_scale),
                                 (dyn.x0_eps(t, x)[1], eps, e_scale)):
            assert float((got - want).abs().max()) <= 1e-14 * scale


def _numpy_basis_integrals(nodes, a, b, exp_weight=False):
    """The numpy.polynomial implementation that the pure-Python one replaced."""
    out = []
    for j, vj in enumerate(nodes):
        others = [v for k, v in enumerate(nodes) if k != j]
        p = P.polyfromroots(others) if others else P.polyone
        p = p / P.polyval(vj, p)
        if exp_weight:
            q, d, sign = p.copy(), p, -1.0
            for _ in range(len(others)):
                d = P.polyder(d)
                q = P.polyadd(q, sign * d)
                sign = -sign
            out.append(float(math.exp(b) * P.polyval(b, q) - math.exp(a) * P.polyval(a, q)))
        else:
            q = P.polyint(p)
            out.append(float(P.polyval(b, q) - P.polyval(a, q)))
    return out


def test_basis_integrals_match_numpy_polynomials():
    """The node layouts the solvers use: Adams-type weights on [0, 1] with the history at
    -1, -2, ... step lengths (lms, ipndm_v, adams_bashforth), and DEIS's exponentially weighted
    ones with up to 3 nodes h, 2h, ... in log rho integrated from h to 0 (both implementations
    lose ~h^-(n-1) ulps there; the bar allows for it)."""
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 5)
        nodes = [0.0]
        for _ in range(n - 1):
            nodes.append(nodes[-1] - rng.uniform(0.5, 2.0))
        cases = [(nodes, 0.0, 1.0, False)]
        h = rng.choice([0.05, 0.2, 0.7])
        deis = [h]
        for _ in range(min(n, 3) - 1):                 # DEIS has order <= 3
            deis.append(deis[-1] + h * rng.uniform(0.7, 1.4))
        cases.append((deis, h, 0.0, True))
        for args in cases:
            got, want = basis_integrals(*args), _numpy_basis_integrals(*args)
            scale = max(1.0, max(abs(w) for w in want))
            assert max(abs(g - w) for g, w in zip(got, want)) < 1e-11 * scale, args


def test_basis_integrals_small_sizes_match_the_general_formula():
    from samplerbench.solvers.diffusion.lagrange import _general, _small

    rng = random.Random(2)
    for _ in range(200):
        for exp_weight, n_max in ((False, 4), (True, 3)):
            n = rng.randint(1, n_max)
            nodes = [rng.uniform(-3.0, 1.0) for _ in range(n)]
            a, b = (rng.uniform(-1.0, 0.0), 0.0) if exp_weight else (0.0, rng.uniform(0.5, 1.5))
            got, want = _small(nodes, a, b, exp_weight), _general(nodes, a, b, exp_weight)
            scale = max(1.0, max(abs(w) for w in want))
            assert max(abs(g - w) for g, w in zip(got, want)) < 1e-12 * scale


def test_small_solve_matches_numpy():
    rng = random.Random(1)
    for n in (1, 2, 3, 4):
        for _ in range(50):
            rks = [-rng.uniform(0.3, 3.0) * (k + 1) for k in range(n - 1)] + [1.0]
            A = [[rk**p for rk in rks] for p in range(n)]
            b = [rng.uniform(-1, 1) for _ in range(n)]
            np.testing.assert_allclose(_solve(A, b), np.linalg.solve(np.array(A), np.array(b)),
                                       rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["euler", "ddim", "dpmpp_2m", "unipc_bh2", "ipndm_v", "lms"])
def test_solves_do_not_modify_their_input(name):
    den = load_model("gmm64")
    grid = make_grid("karras", den.schedule, 6)
    x = float(grid.t[0]) * initial_noise([0, 1], den.data_shape)
    x_copy = x.clone()
    s = get_solver(name)
    sol = s.solve(s.make_dynamics(den), x, grid)
    assert sol.status == "ok" and torch.equal(x, x_copy)
