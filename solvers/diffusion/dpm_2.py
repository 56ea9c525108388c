"""DPM-2 (k-diffusion ``sample_dpm_2``): a midpoint step in log(sigma/alpha)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from solvers.base import Solver
from solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class DPM2(Solver):
    """k-diffusion's DPM-2: in the EDM variables xbar = x/alpha, sigmabar = sigma/alpha, where the
    PF-ODE is dxbar/dsigmabar = eps_hat, take an Euler step to the geometric midpoint
    sigma_mid = sqrt(sigmabar_0 sigmabar_1), evaluate eps_hat there, and step the whole interval
    with it: xbar_1 = xbar_0 + (sigmabar_1 - sigmabar_0) eps_hat(mid).

    ODE, order 2, 2 NFE per step.  "Inspired by DPM-Solver-2 and Karras et al. 2022, Alg. 2"
    (Crowson); it is the explicit midpoint rule in sigmabar with the stage placed at the midpoint
    in log sigmabar.  Equals ``sample_dpm_2`` (s_churn = 0) on an EDM model and on the VE view of
    any other.  Algebraically it is DPM-Solver-2 (``dpm_solver_2``, r1 = 1/2): the two agree up
    to rounding; this name is k-diffusion's.  A step from alpha = 0 (sigmabar = inf; rectified
    flow at t = 1) is the Euler (= DDIM) step -- the midpoint is at infinity too -- and costs
    1 NFE."""

    name = "dpm_2"
    kind = "ode"
    order = 2.0
    stages = 2
    reference = ("Crowson, k-diffusion sample_dpm_2; Lu et al. 2022 (DPM-Solver-2); "
                 "Karras et al. 2022 (Alg. 2)")

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0, eps0 = dynamics.x0_eps(t0, x)
        r0, r1 = float(sched.ratio(t0)), float(sched.ratio(t1))
        a1 = float(sched.alpha(t1))
        if math.isinf(r0):
            return a1 * (x0 + r1 * eps0), state
        log0, log1 = math.log(r0), math.log(r1)
        r_mid = math.exp(log0 + 0.5 * (log1 - log0))
        t_mid = float(sched.t_from_ratio(r_mid))
        x_mid = float(sched.alpha(t_mid)) * (x0 + r_mid * eps0)
        _, eps_mid = dynamics.x0_eps(t_mid, x_mid)
        xbar0 = x / float(sched.alpha(t0))
        return a1 * (xbar0 + (r1 - r0) * eps_mid), state
