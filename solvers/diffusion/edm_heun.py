"""EDM's deterministic sampler (Karras et al. 2022, Alg. 1 / Alg. 2 with S_churn = 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class EDMHeun(Solver):
    """Heun's method in the EDM variables: xbar = x/alpha, sigmabar = sigma/alpha, in which the
    PF-ODE of any schedule is dxbar/dsigmabar = eps_hat (Karras et al. 2022, Sec. 3 and Alg. 1 with
    sigma(t) = t, s(t) = 1; NVlabs/edm ``edm_sampler`` applies this to VP and VE networks alike).

    ODE, order 2, 2 NFE per step; deterministic (no churn).  On an EDM-schedule model (alpha = 1,
    sigma = t) it is exactly ``heun``; on other schedules it differs from ``heun`` (which steps in
    t) and equals k-diffusion's ``sample_heun`` on the model's VE view.  The last step into t = 0 is
    the denoise step (Euler, as in Alg. 1).  A step from alpha = 0 (sigmabar = inf; rectified flow
    at t = 1) is an Euler (= DDIM) step, 1 NFE: the trapezoid over an infinite sigmabar interval is
    undefined."""

    name = "edm_heun"
    kind = "ode"
    order = 2.0
    stages = 2
    reference = ("Karras, Aittala, Aila & Laine 2022, Elucidating the Design Space of "
                 "Diffusion-Based Generative Models")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        if math.isinf(r0):
            # alpha_1 (x0 + r1 eps0), eps0 = (x - alpha_0 x0) / sigma_0
            c = a1 * r1 / s0
            return lincomb((c, x), (a1 - c * a0, x0)), state
        # x_pred = alpha_1 (x / alpha_0 + (r1 - r0) eps0),  eps0 = (x - alpha_0 x0) / sigma_0
        d = a1 * (r1 - r0) / s0
        x_pred = lincomb((a1 / a0 + d, x), (-d * a0, x0))
        x0_1 = dynamics.denoise(t1, x_pred)
        # alpha_1 (xbar0 + (r1 - r0)/2 (eps0 + eps1)),  eps1 = (x_pred - alpha_1 x0_1) / sigma_1
        hd, e = 0.5 * d, a1 * (0.5 * (r1 - r0)) / s1
        return lincomb((a1 / a0 + hd, x), (-hd * a0, x0), (e, x_pred), (-e * a1, x0_1)), state
