"""RES multistep (Zhang, Song & Chen 2023, Improved Order Analysis and Design of Exponential
Integrator for Diffusion Models Sampling, arXiv 2308.02157: the "refined exponential solver"),
the deterministic second-order multistep exponential integrator that ComfyUI runs as
``res_multistep``.

In data prediction with lambda = log(alpha/sigma), h = lambda_1 - lambda_0 and
phi_1(z) = (e^z - 1)/z, phi_2(z) = (phi_1(z) - 1)/z, the exact solution of the PF-ODE is
x_1 = (sigma_1/sigma_0) x + alpha_1 int_0^h e^{-(h - tau)} x0_hat(lambda_0 + tau) dtau.  RES
interpolates x0_hat linearly through the current and the previous grid point, c2 = -h_prev/h:

    x_1 = (sigma_1/sigma_0) x + alpha_1 h [(phi_1(-h) - phi_2(-h)/c2) D_0 + phi_2(-h)/c2 D_-1],

the exact integral of that interpolant (DPM-Solver++(2M) uses the cruder weight
(1 - e^{-h})/(2r) for the same difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.dpmpp import data_coefs
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


def phi_1(z: float) -> float:
    return math.expm1(z) / z


def phi_2(z: float) -> float:
    """(phi_1(z) - 1)/z, by its series where the difference cancels (|z| small)."""
    if abs(z) < 1e-4:
        return 0.5 + z / 6.0 + z * z / 24.0
    return (phi_1(z) - 1.0) / z


@register_solver
@dataclass(frozen=True)
class RESMultistep(Solver):
    """RES second-order multistep (ComfyUI ``sample_res_multistep``, deterministic): see the module
    docstring for the update.  The first step (no history) is the first-order DPM-Solver++
    (= DDIM) step; the step into t = 0 is the denoise step (ComfyUI's Euler step to sigma = 0 is
    that too).

    ODE, order 2, 1 NFE per step.  After a step from alpha = 0 (lambda = -inf; rectified flow at
    t = 1) c2 = -inf and the next step is first order (the limit of the formula; ComfyUI's
    ``nan_to_num`` gives the same).  No installable peer: checked by its order and by its
    reduction to ``ddim`` on two-step grids (tests/test_samplers_catalogue.py)."""

    name = "res_multistep"
    kind = "ode"
    order = 2.0
    stages = 1
    reference = ("Zhang, Song & Chen 2023, Improved Order Analysis and Design of Exponential "
                 "Integrator for Diffusion Models Sampling (RES); ComfyUI sample_res_multistep")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None                               # (lambda, x0_hat) of the previous step start

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        cx, c0 = data_coefs(dynamics, t0, t1, h)          # sigma_1/sigma_0, alpha_1 h phi_1(-h)
        if state is None or math.isinf(state[0]) or math.isinf(l0):
            x_new = lincomb((cx, x), (c0, x0))
        else:
            l_prev, x0_prev = state
            c2 = -(l0 - l_prev) / h
            b2 = dynamics.scalars(t1)[0] * h * phi_2(-h) / c2
            x_new = lincomb((cx, x), (c0 - b2, x0), (b2, x0_prev))
        return x_new, (l0, x0)
