"""Gradient estimation sampler (Permenter & Yuan 2024, Interpreting and Improving Diffusion Models
from an Optimization Perspective, ICML; ComfyUI ``sample_gradient_estimation``).

In the EDM variables (xbar = x/alpha, sigmabar = sigma/alpha) the PF-ODE is
dxbar/dsigmabar = eps_hat.  Reading sampling as gradient descent on the distance to the data
manifold, the method replaces the current direction d_i = eps_hat(x_i) by the extrapolation

    dbar_i = gamma d_i + (1 - gamma) d_{i-1}         (gamma = 2: 2 d_i - d_{i-1})

and takes the Euler step xbar_{i+1} = xbar_i + (sigmabar_{i+1} - sigmabar_i) dbar_i; the first
step (no d_{-1}) is Euler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class GradientEstimation(Solver):
    """Gradient estimation (ComfyUI ``gradient_estimation``, ``ge_gamma`` = 2): module docstring.

    ODE, 1 NFE per step, order 1: dbar_i estimates the direction at the *end* of the step
    (d_i + (d_i - d_{i-1}) for gamma = 2), so the local error is O(h^2) as Euler's, with a
    different constant (measured 1.0 on gmm64; the method's point is its behaviour at few steps
    on learned denoisers, not its order).  gamma = 1 is Euler in sigmabar (= ``ddim``, tested).
    The first step is Euler (= DDIM); the step into t = 0 is the denoise step (ComfyUI takes the
    extrapolated Euler step to sigma = 0 there, which is not x0_hat for gamma != 1).  From
    alpha = 0 (rectified flow at t = 1) the first step is the DDIM step."""

    ge_gamma: float = 2.0

    name = "gradient_estimation"
    kind = "ode"
    order = 1.0
    stages = 1
    reference = ("Permenter & Yuan 2024, Interpreting and Improving Diffusion Models from an "
                 "Optimization Perspective; ComfyUI sample_gradient_estimation")

    def __post_init__(self):
        v = self.ge_gamma
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"ge_gamma must be a finite number, got {v!r}")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None                               # eps_hat of the previous step

    def step(self, dynamics, t0, t1, x, state, noise):
        x0, eps = dynamics.x0_eps(t0, x)
        a0 = dynamics.scalars(t0)[0]
        a1 = dynamics.scalars(t1)[0]
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        if math.isinf(r0):
            # alpha_1 (x0_hat + r1 eps_hat): the Euler step from sigmabar = inf
            return lincomb((a1, x0), (a1 * r1, eps)), eps
        c = a1 * (r1 - r0)
        if state is None:
            return lincomb((a1 / a0, x), (c, eps)), eps
        g = float(self.ge_gamma)
        return lincomb((a1 / a0, x), (c * g, eps), (c * (1.0 - g), state)), eps
