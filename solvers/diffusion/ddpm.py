"""Ancestral samplers of the DDPM / DDIM family: ``ddpm`` (Ho et al. 2020) and ``ddim_eta``
(Song et al. 2021 with eta > 0).  The deterministic ``ddim`` (eta = 0, an ODE solver) lives in
``ddim.py`` and is unchanged.

Both are written for any schedule through alpha and sigma.  Between grid times t0 > t1 the
forward transition is x_{t0} = (alpha_0/alpha_1) x_{t1} + sigma_{0|1} eps with
sigma_{0|1}^2 = sigma_0^2 - (alpha_0/alpha_1)^2 sigma_1^2, and the posterior q(x_{t1} | x_{t0}, x0)
has mean (sigma_1/sigma_0)^2 (alpha_0/alpha_1) x_{t0} + alpha_1 (1 - q) x0 and variance
sigma_1^2 (1 - q), with q = (ratio_1/ratio_0)^2 (ratio = sigma/alpha; q = 0 where alpha_0 = 0).
No formula divides by alpha_0, so both are defined from alpha = 0 (rectified flow at t = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver

VARIANCES = ("fixed_small", "fixed_large")


def posterior_q(schedule, t0: float, t1: float) -> float:
    """q = (ratio(t1) / ratio(t0))^2, the signal fraction the posterior keeps; 0 from alpha = 0."""
    r0, r1 = float(schedule.ratio(t0)), float(schedule.ratio(t1))
    return 0.0 if math.isinf(r0) else (r1 / r0) ** 2


@register_solver
@dataclass(frozen=True)
class DDPM(Solver):
    """DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Alg. 2) on any grid:
    x_{t1} = posterior mean(x_{t0}, x0_hat) + s z, with s^2 the posterior variance
    sigma_1^2 (1 - q) (``variance="fixed_small"``, Ho et al.'s sigma^2 = beta-tilde; diffusers'
    default) or the forward transition's variance sigma_{0|1}^2 = sigma_0^2 - (alpha_0/alpha_1)^2
    sigma_1^2 (``"fixed_large"``, Ho et al.'s sigma^2 = beta).

    Stochastic (Ito reverse SDE with eta = 1), 1 NFE per step, weak order 1; strong order 1 on
    a Brownian path (additive noise).  With ``fixed_small`` it is the same algorithm as
    ``euler_ancestral`` (eta = 1) and ``ddim_eta`` (eta = 1): alpha_1 (q xbar + (1 - q) x0_hat)
    + sigma_1 sqrt(1 - q) z = alpha_1 (x0_hat + ratio_down eps_hat + ratio_up z).  ``fixed_large``
    adds more noise than the posterior (the difference is O(step^2), except on a step from
    alpha = 0, where the forward transition keeps no signal and the first step adds unit noise)."""

    variance: str = "fixed_small"

    name = "ddpm"
    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    stochastic = True
    reference = "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models"

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, "
                             f"got {self.variance!r}")

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0 = dynamics.denoise(t0, x)
        a0, s0 = float(sched.alpha(t0)), float(sched.sigma(t0))
        a1, s1 = float(sched.alpha(t1)), float(sched.sigma(t1))
        q = posterior_q(sched, t0, t1)
        # posterior mean: (s1/s0)^2 (a0/a1) x + a1 (1 - q) x0
        mean = ((s1 / s0) ** 2 * (a0 / a1)) * x + (a1 * (1.0 - q)) * x0
        if self.variance == "fixed_small":
            var = s1**2 * (1.0 - q)
        else:
            var = max(s0**2 - (a0 / a1) ** 2 * s1**2, 0.0)
        if var > 0.0:
            mean = mean + math.sqrt(var) * noise(t0, t1)
        return mean, state


@register_solver
@dataclass(frozen=True)
class DDIMEta(Solver):
    """DDIM with eta > 0 (Song, Meng & Ermon 2021, Eq. 12 with sigma_t(eta)):
    x_{t1} = alpha_1 x0_hat + sqrt(sigma_1^2 - s^2) eps_hat + s z,
    s = eta sigma_1 sqrt(1 - q) (eta times the DDPM posterior standard deviation).

    Stochastic, 1 NFE per step, weak order 1 (strong order 1 on a Brownian path); eta in [0, 1].
    It integrates the reverse-SDE family with the same eta (g^2 = eta^2 2 sigma^2 d log ratio).
    eta = 1 is ``ddpm`` (``fixed_small``); eta = 0 is the deterministic ``ddim``, which keeps its
    own name and kind "ode" -- this stochastic variant is a separate solver so that the ODE
    solver's capabilities stay what they are.  The same algorithm as ``euler_ancestral`` with the
    same eta (ratio_up = s / alpha_1); the default eta = 0.5 is the halfway point of the DDIM
    paper's eta sweep (eta = 1 would duplicate ``ddpm``)."""

    eta: float = 0.5

    name = "ddim_eta"
    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    stochastic = True
    reference = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models (eta > 0)"

    def __post_init__(self):
        if not (0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0, eps = dynamics.x0_eps(t0, x)
        a1, s1 = float(sched.alpha(t1)), float(sched.sigma(t1))
        s = self.eta * s1 * math.sqrt(max(1.0 - posterior_q(sched, t0, t1), 0.0))
        x_new = a1 * x0 + math.sqrt(max(s1**2 - s**2, 0.0)) * eps
        if s > 0.0:
            x_new = x_new + s * noise(t0, t1)
        return x_new, state
