"""Why ``torchsde_reversible_heun`` blows up on EDM reverse SDEs (issue 17, item 4).

The finding, asserted with numbers: our wrapper is torchsde's reversible Heun, bit for bit (it
equals ``torchsde.sdeint(..., method="reversible_heun")`` on the same SDE and Brownian path), and
the blow-up is the method's own instability.  On dy/ds = lam(s) y one step maps (y, z) by

    M = [[1 + m1, (m0 + m0 m1 - m1)/2], [2, m0 - 1]],   m0 = h lam(s0), m1 = h lam(s1),

with det M = -1 for every step (the method is algebraically reversible, so volume-preserving on
(y, z)): it cannot contract both modes.  With frozen m = h lam its roots are m +- sqrt(1 + m^2);
the parasitic one, |m| + sqrt(1 + m^2) > 1 for every real m < 0, is the inverse of the physical
one, so over a solve it grows by ~1/C, C = the exact contraction of the SDE (1.28e5 on the most
contracting direction of gmm64 under EDM, eta = 1), whatever the step count.  The stability region
is the segment [-i, i] of the imaginary axis (Kidger et al. 2021).  Noise (and the curvature of
the solution) excite that mode every step.
"""

from __future__ import annotations

import math

import pytest
import torch

from samplerbench.bench.metrics import fit_order, per_sample_rms
from samplerbench.models.gmm import GaussianMixture, GMMDenoiser
from samplerbench.models.schedules import make_schedule
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid, make_noise
from samplerbench.solvers.noise import sample_seeds

torchsde = pytest.importorskip("torchsde")

V = 0.05     # the smallest component variance of gmm64 (its covariance regulariser)


class ZeroNoise:
    """A noise source that is identically zero: the drift part of the SDE alone."""

    mode = "zero"

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __call__(self, t0, t1):
        return torch.zeros(self.shape, dtype=torch.float64)

    def levy_h(self, t0, t1):
        return torch.zeros(self.shape, dtype=torch.float64)


def _gauss1d():
    """N(0, V) in 1-D under EDM: the exact denoiser is linear, x0_hat = V x / (V + t^2), so the
    reverse dynamics are dy/ds = lam(s) y with lam = -c t / (V + t^2), s = -t, c = 1 + eta^2
    (c = 1: PF-ODE; c = 2: eta = 1)."""
    return GMMDenoiser(GaussianMixture([1.0], [[0.0]], [[[V]]]), make_schedule("edm"), (1,))


def _lam(c):
    return lambda t: -c * t / (V + t * t)


def _propagator(ts, c):
    """Product of the per-step 2x2 matrices, prod |parasitic root| and prod |physical root|."""
    lam = _lam(c)
    P = torch.eye(2, dtype=torch.float64)
    par = phys = 1.0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t0 - t1
        m0, m1 = h * lam(t0), h * lam(t1)
        P = torch.tensor([[1 + m1, 0.5 * (m0 + m0 * m1 - m1)], [2.0, m0 - 1]],
                         dtype=torch.float64) @ P
        m = 0.5 * (m0 + m1)
        par *= abs(m) + math.sqrt(1 + m * m)
        phys *= m + math.sqrt(1 + m * m)
    return P, par, phys


def test_wrapper_equals_torchsde_sdeint_on_the_same_brownian_path():
    """gmm64, eta = 1, one Brownian path per sample: our per-interval stepping gives the same
    numbers as torchsde's sdeint (uniform grid in s, built as sdeint accumulates it, so that
    sdeint takes exactly one step per output time).  Both blow up to ~1e3 x the data scale."""
    from samplerbench.solvers.sde.torchsde_methods import _View, noise_brownian

    den = load_model("gmm64")
    seeds = list(sample_seeds(0, 8))
    n, s_lo, s_hi = 32, -80.0, -0.002
    h = (s_hi - s_lo) / n
    ts = [torch.tensor(s_lo, dtype=torch.float64)]
    for _ in range(n - 1):
        ts.append(ts[-1] + h)
    ts.append(torch.tensor(s_hi, dtype=torch.float64))
    ts = torch.stack(ts)
    grid = make_grid("list", den.schedule, n, final="t_min", values=(-ts).tolist())
    x0 = initial_noise(seeds, den.data_shape) * 80.0

    solver = get_solver("torchsde_reversible_heun")
    ours = solver.solve(solver.make_dynamics(den), x0, grid,
                        make_noise("brownian", seeds, den.data_shape, grid)).x.reshape(8, -1)

    view = _View(solver.make_dynamics(den).torchsde_view(tuple(den.data_shape)), "diagonal",
                 "stratonovich")
    bm = noise_brownian(make_noise("brownian", seeds, den.data_shape, grid), 8, 64,
                        torch.float64, "cpu")
    theirs = torchsde.sdeint(view, x0.reshape(8, -1), ts, bm=bm, method="reversible_heun",
                             dt=h)[-1]
    scale = float(ours.abs().max())
    assert float((ours - theirs).abs().max()) <= 1e-10 * scale     # measured: 0.0 (bitwise)
    assert scale > 1e3                                             # measured 3.8e3; data ~1


@pytest.mark.parametrize("eta,c", [(0.0, 1.0), (1.0, 2.0)])
@pytest.mark.parametrize("steps", [32, 512])
def test_wrapper_is_the_linear_propagator_and_it_grows_by_one_over_the_contraction(eta, c, steps):
    """Scalar linear test problem from the EDM reverse drift: the wrapper's y_N equals the 2x2
    propagator theory, |det| = 1 exactly, and the parasitic growth prod |m| + sqrt(1 + m^2) is
    the inverse of the exact contraction C = ((V + t_min^2)/(V + t_max^2))^(c/2):
    eta = 1: 1/C = 1.28e5 (9.1e4 at 32 steps, 1.278e5 at 512); PF-ODE: 1/C = 358."""
    den = _gauss1d()
    g = make_grid("karras", den.schedule, steps, final="t_min")
    ts = g.t.tolist()
    solver = get_solver("torchsde_reversible_heun", eta=eta)
    y = float(solver.solve(solver.make_dynamics(den), torch.ones(1, 1, dtype=torch.float64), g,
                           ZeroNoise((1, 1))).x)
    P, par, phys = _propagator(ts, c)
    pred = float(P.sum(1)[0])                  # y_N from (y0, z0) = (1, 1)
    assert abs(y - pred) <= 1e-12 * float(P.abs().max()), (y, pred)
    assert abs(abs(float(torch.linalg.det(P))) - 1.0) < 1e-6
    C = ((V + ts[-1] ** 2) / (V + ts[0] ** 2)) ** (c / 2)
    assert abs(par * phys - 1.0) < 1e-9                        # the roots' product is -1
    assert abs(par * C - 1.0) < (0.3 if steps == 32 else 0.01), (par, 1 / C)
    if eta == 1.0:
        assert par > 9e4
        assert float(torch.linalg.svdvals(P)[0]) > 1e5         # the propagator's gain


@pytest.mark.parametrize("grid_name,steps", [("exponential", 64), ("karras", 64),
                                             ("exponential", 256)])
def test_parasitic_mode_grows_per_step_by_the_amplification_factor(grid_name, steps):
    """On the Brownian path (eta = 1) the parasitic mode dominates z - y (the extra state minus
    the solution); its growth per step is |m| + sqrt(1 + m^2), m = h (lam(s0) + lam(s1))/2,
    to < 1e-4 relative (measured 6e-5 at 64 steps, 2e-7 at 256) over the second half of the solve,
    and it grows by > 1e3 over the solve (measured 1.2e3 .. 1.8e5)."""
    den = _gauss1d()
    g = make_grid(grid_name, den.schedule, steps, final="t_min")
    ts = g.t.tolist()
    solver = get_solver("torchsde_reversible_heun", eta=1.0)
    dyn = solver.make_dynamics(den)
    src = make_noise("brownian", [0], (1,), g)
    x = torch.full((1, 1), 80.0, dtype=torch.float64)
    state = solver.init_state(dyn, x, g)
    w = []
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x, state = solver.step(dyn, t0, t1, x, state, src)
        w.append(float((state["extra"][2].reshape(-1) - x.reshape(-1)).abs()))
    lam = _lam(2.0)
    dev = []
    for k in range(len(w) // 2, len(w)):
        t0, t1 = ts[k], ts[k + 1]
        m = 0.5 * (t0 - t1) * (lam(t0) + lam(t1))
        dev.append(abs((w[k] / w[k - 1]) / (abs(m) + math.sqrt(1 + m * m)) - 1))
    assert max(dev) < 1e-4, max(dev)
    assert w[-1] / w[0] > 1e3


def _gmm64_errors(eta, noise, steps, ref_steps=512):
    den = load_model("gmm64")
    seeds = list(sample_seeds(0, 16))
    x0 = initial_noise(seeds, den.data_shape) * 80.0

    def run(n):
        s = get_solver("torchsde_reversible_heun", eta=eta)
        g = make_grid("karras", den.schedule, n, final="t_min")
        src = (make_noise("brownian", seeds, den.data_shape, g) if noise == "brownian"
               else ZeroNoise((16,) + tuple(den.data_shape)))
        return s.solve(s.make_dynamics(den), x0, g, src).x

    ref = run(ref_steps)
    return [float(per_sample_rms(run(n), ref).mean()) for n in steps]


def test_gmm64_blows_up_on_the_sde_but_not_on_the_pf_ode():
    """gmm64, karras, final = t_min, strong error against its own 512-step solution: on the
    Brownian path (eta = 1) it is 1e4 x the data scale (~0.6) and falls only as ~1/N; the drift
    of the same SDE without noise still reaches 1e3; the PF-ODE (eta = 0) converges at order 2
    from 6e-3 at 32 steps -- the method works where the contraction is mild."""
    steps = [32, 64, 128]
    sde = _gmm64_errors(1.0, "brownian", steps)
    drift = _gmm64_errors(1.0, "zero", steps)
    ode = _gmm64_errors(0.0, "zero", steps)
    assert min(sde) > 5e3, sde
    assert 0.5 < fit_order(steps, sde) < 1.3, sde
    assert drift[0] > 1e3, drift
    assert max(ode) < 1e-2, ode
    assert 1.8 < fit_order(steps, ode) < 2.2, ode
