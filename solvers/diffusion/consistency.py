"""Consistency-model multistep sampling: LCM (Luo, Tan, Huang, Li & Zhao 2023, Latent Consistency
Models; diffusers ``LCMScheduler``) and TCD (Zheng, He, Ma, Xu & Tian 2024, Trajectory Consistency
Distillation; diffusers ``TCDScheduler``).

Both denoise to x0_hat = D(x, t0) and re-noise to the next level; neither integrates the PF-ODE
or the reverse SDE.  With the forward kernel from s to t1,
x_1 = (alpha_1/alpha_s) x_s + sqrt(sigma_1^2 - (alpha_1 sigma_s/alpha_s)^2) z:

  LCM   x_1 = alpha_1 x0_hat + sigma_1 z                       (s = 0: x_s = x0_hat)
  TCD   x_s = alpha_s x0_hat + sigma_s eps_hat,  s = (1 - gamma) t1   (a DDIM step to s),
        then the forward kernel from s to t1.

TCD with gamma = 1 is LCM; with gamma = 0 it is DDIM.  They are designed for *distilled*
consistency models, whose one-call x0 prediction is already a good sample.  On an ordinary
(non-distilled) denoiser x0_hat is the posterior mean, so LCM is ancestral sampling with x0
prediction that discards all but D's view of x at every step: it does not converge to the model's
distribution as the steps grow (the samples are blurred towards posterior means); it is here to
benchmark the consistency protocol, not as an SDE solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

_NOTE = ("designed for distilled consistency models; on a non-distilled denoiser it is ancestral "
         "x0 sampling and does not converge to the model's distribution")


@register_solver
@dataclass(frozen=True)
class LCM(Solver):
    """LCM multistep sampling (diffusers ``LCMScheduler``): x_1 = alpha_1 D(x, t0) + sigma_1 z on
    every step to t1 > 0; the step into t = 0 is the denoise step (diffusers' last step returns
    its ``denoised``).  Module docstring for what it is (and is not) on non-distilled models.

    Stochastic (one draw per step, ``fresh`` or ``brownian``), 1 NFE per step, no convergence
    order.  The denoiser is taken as the consistency function itself: diffusers' boundary
    scalings c_skip = 0.25/((10 k)^2 + 0.25), c_out = 10 k/sqrt((10 k)^2 + 0.25) at training
    timestep k belong to LCM's network parametrisation (an adapter's business) and are not
    applied; they move diffusers' result by < 1e-5 relative for k >= 19 (tested, as is equality
    with diffusers when they are switched off by a large ``timestep_scaling``).  On a
    ``final="t_min"`` grid the last step re-noises to t_min like the others."""

    s_noise: float = 1.0

    name = "lcm"
    kind = "sde"
    stages = 1
    stochastic = True
    reference = ("Luo, Tan, Huang, Li & Zhao 2023, Latent Consistency Models; diffusers "
                 "LCMScheduler (" + _NOTE + ")")

    def __post_init__(self):
        v = self.s_noise
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"s_noise must be a finite number >= 0, got {v!r}")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a1, s1 = dynamics.scalars(t1)[:2]
        if self.s_noise == 0.0:
            return x0.mul_(a1), state
        return lincomb((a1, x0), (s1 * float(self.s_noise), noise(t0, t1))), state


@register_solver
@dataclass(frozen=True)
class TCD(Solver):
    """TCD strategic stochastic sampling (diffusers ``TCDScheduler``; ``gamma`` is diffusers'
    ``eta``, the paper's gamma, default 0.3): a DDIM step from t0 to s = (1 - gamma) t1 (in the
    schedule's time t, as TCD's timestep), then the forward kernel from s back to t1 with one
    draw.  The step into t = 0 is the denoise step; the last step of a ``final="t_min"`` grid is
    the DDIM step to t_min with no noise (diffusers' last step: its timestep 0 maps to itself).
    Module docstring for what it is (and is not) on non-distilled models.

    Stochastic for gamma > 0 (``fresh`` or ``brownian``; no draw at gamma = 0: DDIM), 1 NFE per
    step, no convergence order; gamma = 1 is ``lcm`` on ``final="zero"`` grids (tested).
    Equals diffusers on a discrete VP model whose timestep k sits at t = (k + 1)/1000 when
    (1 - gamma)(k + 1) is an integer for the visited timesteps (e.g. the default gamma = 0.3
    with the default original_inference_steps = 50, timesteps 20 m - 1): then diffusers'
    floor((1 - gamma) k) + 1 = (1 - gamma)(k + 1)."""

    gamma: float = 0.3

    name = "tcd"
    kind = "sde"
    stages = 1
    stochastic = True
    reference = ("Zheng, He, Ma, Xu & Tian 2024, Trajectory Consistency Distillation; diffusers "
                 "TCDScheduler (" + _NOTE + ")")

    def __post_init__(self):
        v = self.gamma
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"gamma must be a number in [0, 1], got {v!r}")

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        last = ts[-1] if grid.final == "t_min" else None
        mids = [(1.0 - float(self.gamma)) * t for t in ts[1:] if t != 0.0 and t != last]
        dynamics.prime(mids)
        return {"last": last}

    def step(self, dynamics, t0, t1, x, state, noise):
        x0, eps = dynamics.x0_eps(t0, x)
        ts = t1 if t1 == state["last"] else (1.0 - float(self.gamma)) * t1
        a_s, s_s = dynamics.scalars(ts)[:2]
        if ts == t1:
            return lincomb((a_s, x0), (s_s, eps)), state
        a1, s1 = dynamics.scalars(t1)[:2]
        k = a1 / a_s
        var = s1 * s1 - (k * s_s) ** 2
        terms = [(k * a_s, x0), (k * s_s, eps)]
        if var > 0.0:
            terms.append((math.sqrt(var), noise(t0, t1)))
        return lincomb(*terms), state
