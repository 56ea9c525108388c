"""DPM-2 (k-diffusion ``sample_dpm_2``): a midpoint step in log(sigma/alpha); and its ancestral
variant ``dpm_2_ancestral`` (``sample_dpm_2_ancestral``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.euler_ancestral import ancestral_split
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


@register_solver
@dataclass(frozen=True)
class DPM2Ancestral(Solver):
    """k-diffusion's DPM-2 ancestral (``sample_dpm_2_ancestral``): split the step from
    sigmabar_0 = sigma_0/alpha_0 to sigmabar_1 into a deterministic part down to
    sigma_down and fresh noise of scale sigma_up (``euler_ancestral``'s split with this ``eta``:
    sigma_up = min(sigmabar_1, eta sigmabar_1 sqrt(1 - sigmabar_1^2/sigmabar_0^2)),
    sigma_down = sqrt(sigmabar_1^2 - sigma_up^2)); the deterministic part is a DPM-2 step
    (``dpm_2``: Euler to the log-midpoint sqrt(sigmabar_0 sigma_down), eps_hat there, the whole
    step with it), then xbar_1 = xbar_down + s_noise sigma_up z, x_1 = alpha_1 xbar_1.

    Stochastic (takes a noise source, ``fresh`` or ``brownian``), 2 NFE per step; weak order 1
    at eta = 1 (the ancestral noise is first order; the DPM-2 part is second order and eta = 0 is
    ``dpm_2``).  Like every ancestral sampler it does not converge pathwise with fresh noise.
    Equals ``sample_dpm_2_ancestral`` on an EDM model and on the VE view of any other, given the
    same draws.  A step from alpha = 0 (rectified flow at t = 1) is the first-order ancestral
    step (1 NFE).  Where sigma_down = 0 (eta > 1) the step lands on x0_hat plus the noise;
    k-diffusion skips the noise there."""

    eta: float = 1.0
    s_noise: float = 1.0

    name = "dpm_2_ancestral"
    kind = "sde"
    weak_order = 1.0
    stages = 2
    stochastic = True
    reference = ("Crowson, k-diffusion sample_dpm_2_ancestral; Lu et al. 2022 (DPM-Solver-2); "
                 "Ho et al. 2020 ancestral sampling")

    def __post_init__(self):
        for key in ("eta", "s_noise"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{key} must be a number >= 0, got {v!r}")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1 = dynamics.scalars(t1)[0]
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        down, up = ancestral_split(r0, r1, float(self.eta))
        if math.isinf(r0) or down == 0.0:
            # first order: alpha_1 (x0 + down eps0), eps0 = (x - alpha_0 x0) / sigma_0
            c = a1 * down / s0
            out = lincomb((c, x), (a1 - c * a0, x0))
        else:
            r_mid = math.exp(math.log(r0) + 0.5 * (math.log(down) - math.log(r0)))
            t_mid = float(dynamics.schedule.t_from_ratio(r_mid))
            a_m, s_m, _, _ = dynamics.scalars(t_mid)
            c = a_m * r_mid / s0
            x_mid = lincomb((c, x), (a_m - c * a0, x0))
            del x0
            x0_mid = dynamics.denoise(t_mid, x_mid)
            # alpha_1 (x / alpha_0 + (down - r0) eps_mid)
            e = a1 * (down - r0) / s_m
            out = lincomb((a1 / a0, x), (e, x_mid), (-e * a_m, x0_mid))
        if up > 0.0 and self.s_noise > 0.0:
            out.add_(noise(t0, t1), alpha=a1 * up * float(self.s_noise))
        return out, state
