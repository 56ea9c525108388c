"""DDIM (Song, Meng & Ermon 2021), deterministic (eta = 0)."""

from __future__ import annotations

from dataclasses import dataclass

from solvers.base import Solver
from solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class DDIM(Solver):
    """Deterministic DDIM: x_{t1} = alpha(t1) x0_hat + sigma(t1) eps_hat, both from D(x, t0).

    ODE, order 1, 1 NFE per step.  It is the exponential-integrator (first-order DPM-Solver) step
    of the PF-ODE, and equals Euler in the ratio sigma/alpha (k-diffusion's ``sample_euler`` on a VE
    view).  Well defined from t_max where alpha = 0 (rectified flow at t = 1)."""

    name = "ddim"
    kind = "ode"
    order = 1.0
    stages = 1
    reference = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models"

    def step(self, dynamics, t0, t1, x, state, noise):
        x0, eps = dynamics.x0_eps(t0, x)
        a1, s1, _, _ = dynamics.coefficients(t1, x)
        return a1 * x0 + s1 * eps, state
