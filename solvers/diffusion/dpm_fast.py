"""DPM-Solver-fast (k-diffusion ``sample_dpm_fast``): DPM-Solver-1/2/3 steps uniform in
lambda = log(alpha/sigma) between the grid's ends, the orders chosen to spend a given NFE budget
(Lu et al. 2022, Sec. 3.4 "DPM-Solver-fast").

Also the noise-prediction DPM-Solver steps with free intermediate ratios (r1, r2) that
``dpm_adaptive`` shares.  In x-space, with eps_hat = (x - alpha x0_hat)/sigma and h = lambda_1 -
lambda_0, each is k-diffusion's step on xbar = x/alpha multiplied by alpha_1:

    DPM-Solver-1: x_1 = (alpha_1/alpha_0) x - sigma_1 (e^h - 1) eps_0
    DPM-Solver-2: x_1 = DPM-Solver-1 - sigma_1 (e^h - 1) / (2 r1) (eps_s1 - eps_0)
    DPM-Solver-3: x_1 = DPM-Solver-1 - sigma_1 / r2 ((e^h - 1)/h - 1) (eps_s2 - eps_0)

with eps_s1 at lambda_0 + r1 h (input: DPM-Solver-1 to there) and eps_s2 at lambda_0 + r2 h
(input: DPM-Solver-1 - sigma_s2 (r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) (eps_s1 - eps_0)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver, finish
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.dpm_solver import t_of_lam
from samplerbench.solvers.registry import register_solver

REFERENCE = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion "
             "Probabilistic Model Sampling in Around 10 Steps (Sec. 3.4, App. C); Crowson, "
             "k-diffusion DPMSolver")


class LamStepper:
    """The DPM-Solver stages of one step from (t0, x) in lambda, sharing eps_hat evaluations
    (k-diffusion's ``eps_cache``): ``eps(r)`` is eps_hat at lambda_0 + r h, 1 NFE the first time.
    Stage inputs depend only on (x, eps_0, eps_s1), so a stage at the same r is the same point."""

    def __init__(self, dynamics, t0: float, x, eps0=None):
        self.dyn, self.t0, self.x = dynamics, t0, x
        self.l0 = fused.lam(dynamics, t0)
        self.a0 = dynamics.scalars(t0)[0]
        self.cache = {}
        if eps0 is not None:
            self.cache[0.0] = eps0

    def _eps_at(self, t, u):
        x0 = self.dyn.denoise(t, u)
        a, s, _, _ = self.dyn.scalars(t)
        return torch.add(u, x0, alpha=-a).div_(s)

    def _point(self, lam_):
        t = t_of_lam(self.dyn.schedule, lam_)
        a, s, _, _ = self.dyn.scalars(t)
        return t, a, s

    def eps0(self):
        if 0.0 not in self.cache:
            self.cache[0.0] = self._eps_at(self.t0, self.x)
        return self.cache[0.0]

    def first(self, lam1: float, t1: float | None = None):
        """DPM-Solver-1 to lambda_1 (at time t1 when given, else t(lambda_1))."""
        h = lam1 - self.l0
        if t1 is None:
            _, a1, s1 = self._point(lam1)
        else:
            a1, s1, _, _ = self.dyn.scalars(t1)
        return fused.lincomb((a1 / self.a0, self.x), (-s1 * math.expm1(h), self.eps0()))

    def _eps_s1(self, h, r1):
        key = ("s1", r1)
        if key not in self.cache:
            lam_s = self.l0 + r1 * h
            t_s = t_of_lam(self.dyn.schedule, lam_s)
            self.cache[key] = self._eps_at(t_s, self.first(lam_s, t_s))
        return self.cache[key]

    def second(self, lam1: float, r1: float = 0.5, t1: float | None = None):
        """DPM-Solver-2 with stage ratio r1 (2 NFE, shared with ``third``'s first stage)."""
        h = lam1 - self.l0
        s1 = self.dyn.scalars(t1)[1] if t1 is not None else self._point(lam1)[2]
        e0, e1 = self.eps0(), self._eps_s1(h, r1)
        c = -s1 * math.expm1(h) / (2.0 * r1)
        return self.first(lam1, t1).add_(e1, alpha=c).add_(e0, alpha=-c)

    def third(self, lam1: float, r1: float = 1.0 / 3.0, r2: float = 2.0 / 3.0,
              t1: float | None = None):
        """DPM-Solver-3 with stage ratios (r1, r2) (3 NFE)."""
        h = lam1 - self.l0
        s1 = self.dyn.scalars(t1)[1] if t1 is not None else self._point(lam1)[2]
        e0, e1 = self.eps0(), self._eps_s1(h, r1)
        lam_s2 = self.l0 + r2 * h
        t_s2, _, s_s2 = self._point(lam_s2)
        k2 = -s_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1.0)
        u2 = self.first(lam_s2, t_s2).add_(e1, alpha=k2).add_(e0, alpha=-k2)
        e2 = self._eps_at(t_s2, u2)
        c = -s1 / r2 * (math.expm1(h) / h - 1.0)
        return self.first(lam1, t1).add_(e2, alpha=c).add_(e0, alpha=-c)


def decline_alpha_zero(solver, denoiser, grid) -> str | None:
    """The reason a lambda-uniform solver cannot start where alpha = 0 (lambda = -inf)."""
    if float(denoiser.schedule.alpha(grid.t_start)) == 0.0:
        return (f"{solver.name} places its steps in lambda = log(alpha/sigma), which is -inf where "
                f"alpha = 0 (t = {grid.t_start:g}); start from a finite sigma_max (e.g. grid "
                "'karras')")
    return None


def fast_orders(nfe: int) -> list[int]:
    """k-diffusion's split of an NFE budget into DPM-Solver-k steps: as many third-order steps as
    fit, the remainder (1 or 2) as the last step; a multiple of 3 ends with a 2 and a 1 so that
    the number of steps is floor(nfe/3) + 1 in every case (Lu et al. 2022, Sec. 3.4)."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


@register_solver
@dataclass(frozen=True)
class DPMFast(Solver):
    """DPM-Solver-fast (k-diffusion ``sample_dpm_fast`` at eta = 0): the grid's ends only; with
    budget n, floor(n/3) + 1 steps uniform in lambda from lambda(t_start) to lambda(t_end),
    DPM-Solver-3 steps except the last one or two (``fast_orders``), spending exactly n NFE.

    ``steps`` is the NFE budget: on a grid of ``steps = N`` it spends what a one-call-per-step
    solver spends, N NFE -- k-diffusion's n = N - 1 down to t_min plus the denoise step with
    ``final="zero"`` (ComfyUI instead passes n = N and ends at sigma_min without denoising),
    n = N with ``final="t_min"``.  The grid's interior points (its family) are not used.

    ODE, noise prediction (the paper's DPM-Solver), declared ``stages = 1`` (NFE per grid step),
    order 3: the last step is of order 1 or 2, but it ends at t_min where its local error
    (sigma_1 h^2 d eps_hat/d lambda for order 1) carries the factor sigma(t_min), so the
    third-order steps dominate (measured 2.99 on gmm64, NFE 16-2048, budgets of every residue
    mod 3).  Equals ``sample_dpm_fast`` on the VE view of any model to rounding, when k-diffusion's
    lambda points are float64 (its ``torch.linspace`` takes the default dtype: float32 points
    move the result by ~1e-5).  Cannot start where alpha = 0 (rectified flow at
    t = 1): ``check`` declines it."""

    name = "dpm_fast"
    kind = "ode"
    order = 3.0
    stages = 1
    reference = REFERENCE

    def check(self, denoiser, grid):
        return decline_alpha_zero(self, denoiser, grid)

    def solve(self, dynamics, x, grid, noise=None):
        reason = decline_alpha_zero(self, dynamics.denoiser, grid)
        if reason:
            raise UserError("solver", self.name, hint=reason)
        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        budget = grid.steps - (1 if grid.final == "zero" else 0)
        n_steps = 0
        if budget > 0:
            l_start, l_end = fused.lam(dynamics, grid.t_start), fused.lam(dynamics, grid.t_end)
            orders = fast_orders(budget)
            lams = torch.linspace(l_start, l_end, len(orders) + 1, dtype=torch.float64).tolist()
            ts = [grid.t_start] + fused.t_of_lams(dynamics.schedule, lams[1:-1]) + [grid.t_end]
            dynamics.prime(ts)
            for k, t0, t1, lam1 in zip(orders, ts[:-1], ts[1:], lams[1:]):
                st = LamStepper(dynamics, t0, x)
                x = (st.first(lam1, t1) if k == 1 else st.second(lam1, t1=t1) if k == 2
                     else st.third(lam1, t1=t1))
                n_steps += 1
        if grid.final == "zero":
            x = dynamics.denoise(grid.t_end, x)
            n_steps += 1
        return finish(x, dynamics, nfe0, fp0, n_steps)
