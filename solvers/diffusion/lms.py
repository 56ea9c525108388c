"""Linear multistep in sigma/alpha (k-diffusion ``sample_lms``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.diffusion.lagrange import basis_integrals
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class LMS(Solver):
    """Linear multistep (Adams-Bashforth with variable steps) on dxbar/dsigmabar = eps_hat in the
    EDM variables xbar = x/alpha, sigmabar = sigma/alpha: xbar_1 = xbar_0 + sum_j c_j eps_j with
    c_j the integral over [sigmabar_0, sigmabar_1] of the Lagrange polynomial through the last
    ``solver_order`` values of sigmabar.

    ODE, order ``solver_order`` (default 4; k-diffusion's ``sample_lms(order=4)``), 1 NFE per
    step; step k (from 1) has order min(k, solver_order).  The parameter is named
    ``solver_order`` like every multistep solver here (``order`` is the declared convergence
    order, set from it per instance).  Equals k-diffusion's ``sample_lms`` up to two
    deliberate differences: (1) the coefficients are exact (closed-form polynomial integrals), not
    ``scipy.integrate.quad(epsrel=1e-4)``; (2) the step into t = 0 is the denoise step
    x <- D(x, t_min) like every solver here, where ``sample_lms`` takes an LMS step to sigma = 0.
    A step from alpha = 0 (sigmabar = inf) is the Euler (= DDIM) step and that point is left out
    of the history (its Lagrange weight vanishes in the limit)."""

    solver_order: int = 4

    name = "lms"
    kind = "ode"
    order = 4.0           # for the default solver_order; set per instance
    stages = 1
    reference = "Crowson, k-diffusion sample_lms; Adams-Bashforth (1883) with variable steps"

    def __post_init__(self):
        if type(self.solver_order) is not int or self.solver_order < 1:
            raise ValueError(f"solver_order must be an integer >= 1, got {self.solver_order!r}")
        object.__setattr__(self, "order", float(self.solver_order))

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        # history: (sigmabar, sigma eps_hat, sigma), newest first; eps_hat is stored times its
        # sigma (x - alpha x0_hat: one pass over the state), the 1/sigma goes into the weights
        return ()

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1 = dynamics.scalars(t1)[0]
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        if math.isinf(r0):
            # alpha_1 (x0 + r1 eps0), eps0 = x / sigma_0 (alpha_0 = 0)
            c = a1 * r1 / s0
            return lincomb((c, x), (a1 - c * a0, x0)), state
        e0 = torch.add(x, x0, alpha=-a0)            # sigma_0 eps_0
        del x0                                       # its memory can hold the result
        hist = ((r0, e0, s0),) + state[: self.solver_order - 1]
        # in s = (sigmabar - r0) / (r1 - r0) the nodes are O(1) and the step is [0, 1]
        dr = r1 - r0
        c = [dr * w for w in basis_integrals([(h[0] - r0) / dr for h in hist], 0.0, 1.0)]
        # alpha_1 (x / alpha_0 + sum_j c_j eps_j)
        x_new = lincomb((a1 / a0, x), *(((a1 * cj) / sj, ej) for cj, (_, ej, sj) in zip(c, hist)))
        return x_new, hist
