"""Singlestep DPM-Solver-1/2/3 (Lu et al. 2022), noise prediction, exponential integrator in
lambda = log(alpha / sigma) = -log ratio (half the log-SNR).

Also holds the lambda <-> t helpers that the DPM-Solver++ family (``dpmpp.py``) shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.ddim import ddim_update
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


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


@dataclass(frozen=True)
class DPMSolverSinglestep(Solver):
    """Shared loop body of DPM-Solver-k; subclasses fix the order (1, 2, 3)."""

    kind = "ode"
    reference = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver: A Fast ODE Solver for Diffusion "
                 "Probabilistic Model Sampling in Around 10 Steps (Alg. 1, 2)")

    solver_order: ClassVar[int] = 1

    def _stage_lams(self, l0: float, l1: float) -> list[float]:
        """lambda of the intermediate stages of a step (none for order 1 or from lambda = -inf)."""
        if self.solver_order == 1 or math.isinf(l0):
            return []
        h = l1 - l0
        if self.solver_order == 2:
            return [l0 + 0.5 * h]
        return [l0 + (1.0 / 3.0) * h, l0 + (2.0 / 3.0) * h]

    def init_state(self, dynamics, x, grid):
        # grid scalars first (lambda of each point), then the stage times of every step in one
        # vectorised t(lambda) call, then their scalars: no tensor work per step
        ts = prime(dynamics, grid)
        lams = [fused.lam(dynamics, t) for t in ts]
        stage = []
        for l0, l1, t1 in zip(lams[:-1], lams[1:], ts[1:]):
            if t1 != 0.0:
                stage.extend(self._stage_lams(l0, l1))
        stage_ts = fused.t_of_lams(dynamics.schedule, stage)
        dynamics.prime(stage_ts)
        return {"t_of_lam": dict(zip(stage, stage_ts))}

    def _t(self, dynamics, state, lam_: float) -> float:
        t = state["t_of_lam"].get(lam_) if state else None
        return t if t is not None else t_of_lam(dynamics.schedule, lam_)

    def step(self, dynamics, t0, t1, x, state, noise):
        # Every stage and the update are linear in (x, x0_hat of each stage): with
        # eps_hat = (x - alpha x0_hat)/sigma and a stage input u = alpha_s x0 + sigma_s eps0 - ...,
        # eps_s - eps_0 = (alpha_s/sigma_s)(x0_0 - x0_s) - ..., so each stage input and the result
        # is one linear combination of x and the stage outputs.
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        # From alpha(t0) = 0 (lambda0 = -inf) the step is infinitely long in lambda: every stage
        # lambda0 + r h sits at t0 in the limit and the step is the first-order one (1 NFE).
        if self.solver_order == 1 or math.isinf(l0):
            return ddim_update(dynamics, t0, t1, x, x0), state
        h = l1 - l0
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        # x_t = alpha_1 x0 + sigma_1 eps0 = (sigma_1/sigma_0) x + (alpha_1 - alpha_0 sigma_1/sigma_0) x0
        q1 = s1 / s0
        if self.solver_order == 2:
            r1 = 0.5
            t_s1 = self._t(dynamics, state, l0 + r1 * h)
            u1 = ddim_update(dynamics, t0, t_s1, x, x0)
            x0_1 = dynamics.denoise(t_s1, u1)
            a_s1, s_s1, _, _ = dynamics.scalars(t_s1)
            # x_t - c (eps1 - eps0), eps1 - eps0 = (alpha_s1/sigma_s1)(x0 - x0_1)
            k = (s1 * math.expm1(h) / (2.0 * r1)) * (a_s1 / s_s1)
            return lincomb((q1, x), (a1 - a0 * q1 - k, x0), (k, x0_1)), state
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        t_s1 = self._t(dynamics, state, l0 + r1 * h)
        t_s2 = self._t(dynamics, state, l0 + r2 * h)
        u1 = ddim_update(dynamics, t0, t_s1, x, x0)
        x0_1 = dynamics.denoise(t_s1, u1)
        a_s1, s_s1, _, _ = dynamics.scalars(t_s1)
        a_s2, s_s2, _, _ = dynamics.scalars(t_s2)
        phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
        # u2 = DPM-Solver-1(t_s2) - k2 (eps1 - eps0), eps1 - eps0 = e1 (x0 - x0_1)
        e1 = a_s1 / s_s1
        k2 = s_s2 * (r2 / r1) * phi_22
        q2 = s_s2 / s0
        u2 = lincomb((q2, x), (a_s2 - a0 * q2 - k2 * e1, x0), (k2 * e1, x0_1))
        x0_2 = dynamics.denoise(t_s2, u2)
        # eps2 - eps0 = (alpha_s2 (x0 - x0_2) - k2 (eps1 - eps0)) / sigma_s2
        phi_2 = math.expm1(h) / h - 1.0
        k = s1 * phi_2 / r2
        e2 = a_s2 / s_s2
        w1 = k * k2 * e1 / s_s2            # weight of (x0 - x0_1) in -k (eps2 - eps0)
        return lincomb((q1, x), (a1 - a0 * q1 - k * e2 + w1, x0), (-w1, x0_1),
                       (k * e2, x0_2)), state


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
