"""EDM's deterministic sampler (Karras et al. 2022, Alg. 1 / Alg. 2 with S_churn = 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from solvers.base import Solver
from solvers.registry import register_solver


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

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0, eps0 = dynamics.x0_eps(t0, x)
        r0, r1 = float(sched.ratio(t0)), float(sched.ratio(t1))
        a1 = float(sched.alpha(t1))
        if math.isinf(r0):
            return a1 * (x0 + r1 * eps0), state
        xbar0 = x / float(sched.alpha(t0))
        x_pred = a1 * (xbar0 + (r1 - r0) * eps0)
        _, eps1 = dynamics.x0_eps(t1, x_pred)
        return a1 * (xbar0 + (0.5 * (r1 - r0)) * (eps0 + eps1)), state
