"""DPM-2 (k-diffusion ``sample_dpm_2``): a midpoint step in log(sigma/alpha)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


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

    def _mid(self, dynamics, t0, t1):
        """(sigmabar_mid, t_mid) of a step with finite sigmabar_0."""
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        log0, log1 = math.log(r0), math.log(r1)
        return math.exp(log0 + 0.5 * (log1 - log0))

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        mids = [self._mid(dynamics, t0, t1) for t0, t1 in zip(ts[:-1], ts[1:])
                if t1 != 0.0 and not math.isinf(fused.ratio(dynamics, t0))]
        t_mids = (dynamics.schedule.t_from_ratio(torch.tensor(mids, dtype=torch.float64)).tolist()
                  if mids else [])
        dynamics.prime(t_mids)
        return {"t_mid": dict(zip(mids, t_mids))}

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1 = dynamics.scalars(t1)[0]
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        if math.isinf(r0):
            # alpha_1 (x0 + r1 eps0), eps0 = (x - alpha_0 x0) / sigma_0
            c = a1 * r1 / s0
            return lincomb((c, x), (a1 - c * a0, x0)), state
        r_mid = self._mid(dynamics, t0, t1)
        t_mid = state["t_mid"].get(r_mid) if state else None
        if t_mid is None:
            t_mid = float(dynamics.schedule.t_from_ratio(r_mid))
        a_m, s_m, _, _ = dynamics.scalars(t_mid)
        # x_mid = alpha_mid (x0 + r_mid eps0)
        c = a_m * r_mid / s0
        x_mid = lincomb((c, x), (a_m - c * a0, x0))
        del x0                                       # not needed below: free it for the model
        x0_mid = dynamics.denoise(t_mid, x_mid)
        # alpha_1 (x / alpha_0 + (r1 - r0) eps_mid),  eps_mid = (x_mid - alpha_mid x0_mid) / sigma_mid
        e = a1 * (r1 - r0) / s_m
        return lincomb((a1 / a0, x), (e, x_mid), (-e * a_m, x0_mid)), state
