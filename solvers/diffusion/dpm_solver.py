"""Singlestep DPM-Solver-1/2/3 (Lu et al. 2022), noise prediction, exponential integrator in
lambda = log(alpha / sigma) = -log ratio (half the log-SNR).

Also holds the lambda <-> t helpers that the DPM-Solver++ family (``dpmpp.py``) shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from solvers.base import Solver
from solvers.registry import register_solver


def lam(schedule, t: float) -> float:
    """lambda(t) = -log(sigma/alpha); -inf where alpha = 0 (rectified flow at t = 1)."""
    r = float(schedule.ratio(t))
    return -math.inf if math.isinf(r) else -math.log(r)


def t_of_lam(schedule, lam_: float) -> float:
    """The time at which lambda(t) = lam_ (inverse of :func:`lam`)."""
    return float(schedule.t_from_log_snr(2.0 * lam_))


def coeffs(schedule, t: float) -> tuple[float, float]:
    """(alpha(t), sigma(t)) as floats."""
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def ddim_step(schedule, x0, eps, t1: float):
    """First-order exponential-integrator step from (x0_hat, eps_hat): alpha_1 x0 + sigma_1 eps.

    It equals (alpha_1/alpha_0) x - sigma_1 expm1(h) eps (noise form) and
    (sigma_1/sigma_0) x - alpha_1 expm1(-h) x0 (data form) without dividing by alpha_0."""
    a1, s1 = coeffs(schedule, t1)
    return a1 * x0 + s1 * eps


@dataclass(frozen=True)
class DPMSolverSinglestep(Solver):
    """Shared loop body of DPM-Solver-k; subclasses fix the order (1, 2, 3)."""

    kind = "ode"
    reference = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion "
                 "Probabilistic Model Sampling in Around 10 Steps (Alg. 1, 2)")

    solver_order: ClassVar[int] = 1

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0, eps0 = dynamics.x0_eps(t0, x)
        l0, l1 = lam(sched, t0), lam(sched, t1)
        # From alpha(t0) = 0 (lambda0 = -inf) the step is infinitely long in lambda: every stage
        # lambda0 + r h sits at t0 in the limit and the step is the first-order one (1 NFE).
        if self.solver_order == 1 or math.isinf(l0):
            return ddim_step(sched, x0, eps0, t1), state
        h = l1 - l0
        a1, s1 = coeffs(sched, t1)
        x_t = a1 * x0 + s1 * eps0
        if self.solver_order == 2:
            r1 = 0.5
            t_s1 = t_of_lam(sched, l0 + r1 * h)
            u1 = ddim_step(sched, x0, eps0, t_s1)
            _, eps1 = dynamics.x0_eps(t_s1, u1)
            return x_t - (s1 * math.expm1(h) / (2.0 * r1)) * (eps1 - eps0), state
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t_s1, t_s2 = t_of_lam(sched, l0 + r1 * h), t_of_lam(sched, l0 + r2 * h)
        u1 = ddim_step(sched, x0, eps0, t_s1)
        _, eps1 = dynamics.x0_eps(t_s1, u1)
        _, s_s2 = coeffs(sched, t_s2)
        phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
        u2 = ddim_step(sched, x0, eps0, t_s2) - (s_s2 * (r2 / r1) * phi_22) * (eps1 - eps0)
        _, eps2 = dynamics.x0_eps(t_s2, u2)
        phi_2 = math.expm1(h) / h - 1.0
        return x_t - (s1 * phi_2 / r2) * (eps2 - eps0), state


@register_solver
@dataclass(frozen=True)
class DPMSolver1(DPMSolverSinglestep):
    """DPM-Solver-1: x_1 = (alpha_1/alpha_0) x - sigma_1 (e^h - 1) eps_hat(x, t0).

    ODE, order 1, 1 NFE per step.  The same algorithm as ``ddim`` (Lu et al. 2022, Prop. 4.1),
    registered under its paper name; computed as alpha_1 x0_hat + sigma_1 eps_hat so that it is
    defined from alpha = 0."""

    name = "dpm_solver_1"
    order = 1.0
    stages = 1
    solver_order = 1


@register_solver
@dataclass(frozen=True)
class DPMSolver2(DPMSolverSinglestep):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1, r1 = 1/2): a DPM-Solver-1 step to lambda0 + h/2, then
    x_1 = DPM-Solver-1(x) - sigma_1 (e^h - 1) / (2 r1) (eps_s1 - eps_0), h = lambda1 - lambda0.

    ODE, order 2, 2 NFE per step (noise prediction; k-diffusion ``DPMSolver.dpm_solver_2_step``).
    Algebraically the same as k-diffusion's ``sample_dpm_2`` (``dpm_2``).
    A step from alpha = 0 (rectified flow at t = 1, lambda = -inf) is the first-order step (its
    stages all sit at t0 in the limit) and costs 1 NFE."""

    name = "dpm_solver_2"
    order = 2.0
    stages = 2
    solver_order = 2


@register_solver
@dataclass(frozen=True)
class DPMSolver3(DPMSolverSinglestep):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2, r1 = 1/3, r2 = 2/3):
    u1 = DPM-Solver-1 to s1; u2 = DPM-Solver-1 to s2 - sigma_s2 (r2/r1) phi(r2 h) (eps_s1 - eps_0);
    x_1 = DPM-Solver-1 - sigma_1 / r2 phi(h) (eps_s2 - eps_0), phi(h) = (e^h - 1)/h - 1.

    ODE, order 3, 3 NFE per step (noise prediction; k-diffusion ``DPMSolver.dpm_solver_3_step``).
    A step from alpha = 0 (lambda = -inf) is the first-order step and costs 1 NFE."""

    name = "dpm_solver_3"
    order = 3.0
    stages = 3
    solver_order = 3
