"""Euler ancestral (k-diffusion ``sample_euler_ancestral``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver


def ancestral_split(r0: float, r1: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from ratio r0 to r1 (r0 may be inf):
    sigma_up = min(r1, eta r1 sqrt(1 - r1^2 / r0^2)), sigma_down = sqrt(r1^2 - sigma_up^2)."""
    if eta == 0.0:
        return r1, 0.0
    q = 0.0 if math.isinf(r0) else (r1 / r0) ** 2
    up = min(r1, eta * r1 * math.sqrt(max(1.0 - q, 0.0)))
    return math.sqrt(max(r1**2 - up**2, 0.0)), up


@register_solver
@dataclass(frozen=True)
class EulerAncestral(Solver):
    """Euler ancestral sampler: a DDIM step to the lower noise level sigma_down, then fresh noise of
    scale sigma_up (in the ratio sigma/alpha), so the marginal noise level lands on t1.

    Stochastic (takes a noise source), 1 NFE per step; weak order 1 at eta = 1.  It does not
    converge pathwise: with fresh noise the result at N and 2N steps differ by O(data scale).
    Computed in x0/eps form, so it is defined from alpha = 0 (rectified flow at t = 1); equals
    k-diffusion's ``sample_euler_ancestral`` on an EDM-schedule model (same noise draws)."""

    eta: float = 1.0
    s_noise: float = 1.0

    name = "euler_ancestral"
    kind = "sde"
    weak_order = 1.0
    stages = 1
    stochastic = True
    reference = "Crowson, k-diffusion (2022); Ho et al. 2020 ancestral sampling"

    def __post_init__(self):
        if not (self.eta >= 0):
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        r0, r1 = float(sched.ratio(t0)), float(sched.ratio(t1))
        down, up = ancestral_split(r0, r1, self.eta)
        x0, eps = dynamics.x0_eps(t0, x)
        xbar = x0 + down * eps
        if up > 0.0:
            xbar = xbar + (up * self.s_noise) * noise(t0, t1)
        return float(sched.alpha(t1)) * xbar, state
