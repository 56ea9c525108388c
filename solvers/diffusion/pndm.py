"""PNDM (Liu, Ren, Lin & Zhao 2022, Pseudo Numerical Methods for Diffusion Models on Manifolds):
F-PNDM, as diffusers' ``PNDMScheduler`` (``skip_prk_steps=False``) runs it.

Every step moves the state with the *transfer* of the paper's Eq. (9), which is the DDIM step
with a given noise estimate e:

    phi(x, e, t0 -> t1) = (alpha_1/alpha_0) x + (sigma_1 - alpha_1 sigma_0/alpha_0) e,

and the methods differ only in the e they feed it.  The first three steps are pseudo
Runge-Kutta (Eq. 13): e1 = eps_hat(x, t0); e2 = eps_hat(phi(x, e1, t0 -> m), m);
e3 = eps_hat(phi(x, e2, t0 -> m), m); e4 = eps_hat(phi(x, e3, t0 -> t1), t1) with m = (t0 + t1)/2
in the schedule's time, and e = (e1 + 2 e2 + 2 e3 + e4)/6.  Every later step is pseudo linear
multistep (Eq. 12): e = (55 e_0 - 59 e_-1 + 37 e_-2 - 9 e_-3)/24 over eps_hat at the last four
step starts (the Runge-Kutta steps contribute their e1).
"""

from __future__ import annotations

from dataclasses import dataclass

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

PRK_STEPS = 3
PRK_NFE = 4
AB4 = (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0)


def transfer(dynamics, t0: float, t1: float, x, e):
    """The paper's Eq. (9): a DDIM step from t0 to t1 with noise estimate ``e``."""
    a0, s0, _, _ = dynamics.scalars(t0)
    a1, s1, _, _ = dynamics.scalars(t1)
    return lincomb((a1 / a0, x), (s1 - a1 * s0 / a0, e))


@register_solver
@dataclass(frozen=True)
class PNDM(Solver):
    """F-PNDM (Liu et al. 2022, Alg. 2; diffusers ``PNDMScheduler`` with ``skip_prk_steps=False``):
    three pseudo Runge-Kutta steps (4 NFE each, stages at the midpoint in the schedule's t), then
    pseudo linear multistep steps with the fixed fourth-order Adams-Bashforth weights
    (1 NFE each) -- see the module docstring for the formulas.

    ODE, NFE = 4 per step for the first three steps and 1 after (``stages`` = 1, the steady
    state; ``declared_nfe`` counts the warm-up).  Declared order 2, measured 2.02 (gmm64, karras) and 1.95
    (gmm64-vp, uniform in t): the Adams-Bashforth weights average eps_hat uniformly in t, while
    the transfer needs the exponentially weighted average over lambda that an exponential
    integrator uses, a mismatch of relative size O(h) -- local error O(h^3) even on uniform
    steps.  The pseudo-RK warm-up keeps the start accurate.  Equals diffusers'
    ``PNDMScheduler`` (set_alpha_to_one=False) on its own timesteps through a
    ``DiscreteVPSchedule`` (timestep k at t = (k+1)/N_train, so the scheduler's half-step
    timestep T - r/2 is our midpoint) when its step ratio r = N_train // steps is even; for odd r
    diffusers rounds the half step down (T - (r - 1)/2) and the two differ by that.  diffusers'
    last call (at timestep 0 into alpha_cumprod_0 itself) moves nothing: our ``final="t_min"``
    result, one NFE less; with ``set_alpha_to_one=True`` it extrapolates eps into t = 0 where
    every solver here takes the denoise step D(x, t_min).  Cannot start where alpha = 0
    (rectified flow at t = 1): the transfer divides by alpha_0, so ``check`` declines it."""

    name = "pndm"
    kind = "ode"
    order = 2.0
    stages = 1                  # after the warm-up; declared_nfe counts the 4-call steps
    reference = ("Liu, Ren, Lin & Zhao 2022, Pseudo Numerical Methods for Diffusion Models on "
                 "Manifolds (F-PNDM); diffusers PNDMScheduler")

    def declared_nfe(self, grid):
        n = grid.steps - (1 if grid.final == "zero" else 0)       # steps between positive times
        prk = min(n, PRK_STEPS)
        return prk * PRK_NFE + (n - prk) + (1 if grid.final == "zero" else 0)

    def check(self, denoiser, grid):
        if float(denoiser.schedule.alpha(grid.t_start)) == 0.0:
            return ("pndm's transfer (DDIM with a combined noise estimate) divides by alpha, "
                    f"which is 0 at t = {grid.t_start:g}; start from a finite sigma_max (e.g. "
                    "grid 'karras')")
        return None

    def init_state(self, dynamics, x, grid):
        reason = self.check(dynamics.denoiser, grid)
        if reason:
            raise UserError("solver", self.name, hint=reason)
        ts = prime(dynamics, grid)
        mids = [0.5 * (t0 + t1) for t0, t1 in zip(ts[:PRK_STEPS], ts[1:PRK_STEPS + 1])]
        dynamics.prime(mids)
        return ()                         # eps_hat at the last step starts, newest first

    def _eps(self, dynamics, t, x):
        return dynamics.x0_eps(t, x)[1]

    def step(self, dynamics, t0, t1, x, state, noise):
        e1 = self._eps(dynamics, t0, x)
        hist = (e1,) + state[:3]
        if len(state) < PRK_STEPS:
            m = 0.5 * (t0 + t1)
            e2 = self._eps(dynamics, m, transfer(dynamics, t0, m, x, e1))
            e3 = self._eps(dynamics, m, transfer(dynamics, t0, m, x, e2))
            e4 = self._eps(dynamics, t1, transfer(dynamics, t0, t1, x, e3))
            e = lincomb((1.0 / 6.0, e1), (1.0 / 3.0, e2), (1.0 / 3.0, e3), (1.0 / 6.0, e4))
        else:
            e = lincomb(*zip(AB4, hist))
        return transfer(dynamics, t0, t1, x, e), hist
