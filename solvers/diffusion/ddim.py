"""DDIM (Song, Meng & Ermon 2021), deterministic (eta = 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


def ddim_update(dynamics, t0: float, t1: float, x, x0):
    """alpha_1 x0_hat + sigma_1 eps_hat with eps_hat = (x - alpha_0 x0_hat) / sigma_0, as the one
    linear combination (sigma_1/sigma_0) x + (alpha_1 - alpha_0 sigma_1/sigma_0) x0_hat (two passes
    over the state; finite from alpha_0 = 0)."""
    a0, s0, _, _ = dynamics.scalars(t0)
    a1, s1, _, _ = dynamics.scalars(t1)
    c = s1 / s0
    return lincomb((c, x), (a1 - a0 * c, x0))


@register_solver
@dataclass(frozen=True)
class DDIM(Solver):
    """Deterministic DDIM: x_{t1} = alpha(t1) x0_hat + sigma(t1) eps_hat, both from D(x, t0).

    ODE, order 1, 1 NFE per step.  It is the exponential-integrator (first-order DPM-Solver) step
    of the PF-ODE, and equals Euler in the ratio sigma/alpha (k-diffusion's ``sample_euler`` on a VE
    view).  Well defined from t_max where alpha = 0 (rectified flow at t = 1).

    ``clip_x0 = c`` (default None: off) is diffusers' ``DDIMScheduler(clip_sample=True,
    clip_sample_range=c)``: x0_hat is clipped to [-c, c] where it is used, eps_hat still comes
    from the unclipped x0_hat (x_1 = alpha_1 clip(x0_hat) + sigma_1 eps_hat), and the denoise step
    returns clip(x0_hat).  It is not a step of the PF-ODE (and no longer order 1 where it acts)."""

    clip_x0: float | None = None

    name = "ddim"
    kind = "ode"
    order = 1.0
    stages = 1
    reference = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models"

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None

    def __post_init__(self):
        c = self.clip_x0
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float))
                              or not 0 < c < math.inf):
            raise ValueError(f"clip_x0 must be a positive number (or unset), got {c!r}")

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        if self.clip_x0 is None:
            return ddim_update(dynamics, t0, t1, x, x0), state
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        c = s1 / s0
        # alpha_1 clip(x0) + sigma_1 (x - alpha_0 x0) / sigma_0
        return lincomb((c, x), (a1, x0.clamp(-self.clip_x0, self.clip_x0)), (-a0 * c, x0)), state

    def denoise_step(self, dynamics, t0, x):
        x0 = dynamics.denoise(t0, x)
        return x0 if self.clip_x0 is None else x0.clamp(-self.clip_x0, self.clip_x0)
