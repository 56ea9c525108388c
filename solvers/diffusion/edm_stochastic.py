"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2): churn, then a Heun step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class EDMStochastic(Solver):
    """Karras et al. 2022, Alg. 2, in the EDM variables xbar = x/alpha, sigmabar = sigma/alpha (as
    ``edm_heun``; NVlabs/edm ``edm_sampler`` and k-diffusion ``sample_heun`` with churn).  Each step
    from sigmabar_0 to sigmabar_1:
      gamma = min(S_churn / N, sqrt(2) - 1) if S_min <= sigmabar_0 <= S_max else 0  (N = grid steps)
      sigmabar_hat = (1 + gamma) sigmabar_0,
      xbar_hat = xbar + S_noise sqrt(sigmabar_hat^2 - sigmabar_0^2) z   ("churn": raise the noise)
      then Heun's step in sigmabar from sigmabar_hat to sigmabar_1 (PF-ODE
      dxbar/dsigmabar = eps_hat).
    The model is evaluated at t_hat = t(sigmabar_hat), which lies above t_max on the first step when
    S_max >= sigma_max (as in EDM and k-diffusion).

    Stochastic, 2 NFE per step; weak order 1 (a Langevin-type SDE whose noise rate S_churn / N
    per step goes to a limit as N grows on one grid family; for N < S_churn / (sqrt 2 - 1) the
    churn is capped and the sampler is far from that limit).  z comes from the step's interval
    noise(t0, t1), so on a Brownian path the churn noise is consistent across step counts.
    The last step into t = 0 is the denoise step without churn (Alg. 2 churns it only when
    sigma_min >= S_min, which the defaults exclude).  No churn where alpha = 0 (sigmabar already
    infinite): that step is the Euler / DDIM step of ``edm_heun`` (1 NFE).

    Defaults: Karras et al. Table 5's ImageNet-64 settings S_churn = 40, S_min = 0.05,
    S_max = 50, with S_noise = 1 (S_noise > 1 inflates the noise, which biases the distribution
    a benchmark of numerics should measure unbiased); S_min and S_max are in sigma/alpha units."""

    S_churn: float = 40.0
    S_min: float = 0.05
    S_max: float = 50.0
    S_noise: float = 1.0

    name = "edm_stochastic"
    kind = "sde"
    weak_order = 1.0
    stages = 2
    stochastic = True
    infinite_ok = ("S_max",)    # S_max = inf churns at every noise level (k-diffusion)
    reference = ("Karras, Aittala, Aila & Laine 2022, Elucidating the Design Space of "
                 "Diffusion-Based Generative Models (Alg. 2)")

    def __post_init__(self):
        for f in ("S_churn", "S_min", "S_max", "S_noise"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{f} must be a number >= 0, got {v!r}")
        if self.S_min > self.S_max:
            raise ValueError(f"S_min ({self.S_min}) must not exceed S_max ({self.S_max})")

    def init_state(self, dynamics, x, grid):
        return {"n": grid.steps}

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        r0, r1 = float(sched.ratio(t0)), float(sched.ratio(t1))
        a1 = float(sched.alpha(t1))
        if math.isinf(r0):
            x0, eps0 = dynamics.x0_eps(t0, x)
            return a1 * (x0 + r1 * eps0), state
        xbar = x / float(sched.alpha(t0))
        gamma = (min(self.S_churn / state["n"], math.sqrt(2.0) - 1.0)
                 if self.S_min <= r0 <= self.S_max else 0.0)
        r_hat, t_hat = r0, t0
        if gamma > 0.0:
            r_hat = r0 * (1.0 + gamma)
            t_hat = float(sched.t_from_ratio(r_hat))
            xbar = xbar + (self.S_noise * math.sqrt(r_hat**2 - r0**2)) * noise(t0, t1)
        _, eps0 = dynamics.x0_eps(t_hat, float(sched.alpha(t_hat)) * xbar)
        x_pred = a1 * (xbar + (r1 - r_hat) * eps0)
        _, eps1 = dynamics.x0_eps(t1, x_pred)
        return a1 * (xbar + (0.5 * (r1 - r_hat)) * (eps0 + eps1)), state
