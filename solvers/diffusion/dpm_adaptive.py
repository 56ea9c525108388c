"""DPM-Solver-12 / DPM-Solver-23 with adaptive steps in lambda (k-diffusion
``sample_dpm_adaptive``; Lu et al. 2022, App. C, Alg. 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver, finish
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.dpm_fast import REFERENCE, LamStepper, decline_alpha_zero
from samplerbench.solvers.diffusion.dpm_solver import t_of_lam
from samplerbench.solvers.registry import register_solver

MAX_ATTEMPTS = 100_000      # a step size that collapses must not loop for ever


@register_solver
@dataclass(frozen=True)
class DPMAdaptive(Solver):
    """Adaptive DPM-Solver (k-diffusion ``sample_dpm_adaptive`` at eta = 0) from the grid's start
    to its last positive time, then the denoise step if the grid ends at 0.

    Each attempted step from lambda_s with size h (in lambda = log(alpha/sigma)) computes a low-
    and a high-order solution sharing their model calls: ``solver_order = 3`` (default):
    DPM-Solver-2 with r1 = 1/3 and DPM-Solver-3 (3 NFE); ``solver_order = 2``: DPM-Solver-1 and
    -2 (2 NFE).
    The error is RMS((x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|))) over the whole
    batch, in k-diffusion's variable xbar = x/alpha (x_prev: the last accepted x_low).  A PID
    controller on 1/error (``pcoeff``, ``icoeff``, ``dcoeff``, divided by the order; step factor
    limited by 1 + atan(f - 1)) scales h and accepts when the factor is >= ``accept_safety``;
    the high-order solution is kept.  Defaults are k-diffusion's (rtol 0.05, atol 0.0078,
    h_init 0.05: tuned for data in [-1, 1]; the harness's ``tolerances`` set rtol = atol).

    ODE, adaptive, order ``solver_order`` (the kept solution's), NFE counted.  Equals
    ``sample_dpm_adaptive`` on the VE view of any model to rounding, with one deliberate
    difference: after a rejected step eps_hat at lambda_s is reused (the state has not moved),
    where k-diffusion calls the model again, so NFE = k-diffusion's minus the number of
    rejections.  Like every adaptive solver here, the step sizes depend on the whole batch.
    Cannot start where alpha = 0 (rectified flow at t = 1): ``check`` declines it.  The noisy
    variant (eta > 0) is not offered."""

    rtol: float = 0.05
    atol: float = 0.0078
    solver_order: int = 3
    h_init: float = 0.05
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81

    name = "dpm_adaptive"
    kind = "ode"
    order = 3.0            # for the default solver_order; set per instance
    stages = None
    adaptive = True
    reference = REFERENCE

    def __post_init__(self):
        for k in ("rtol", "atol"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"{k} must be a number in (0, 1), got {v!r}")
        if self.solver_order not in (2, 3) or isinstance(self.solver_order, bool):
            raise ValueError(f"solver_order must be 2 or 3, got {self.solver_order!r}")
        for k in ("h_init", "accept_safety"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{k} must be a number > 0, got {v!r}")
        for k in ("pcoeff", "icoeff", "dcoeff"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{k} must be a finite number, got {v!r}")
        object.__setattr__(self, "order", float(self.solver_order))

    def check(self, denoiser, grid):
        return decline_alpha_zero(self, denoiser, grid)

    def solve(self, dynamics, x, grid, noise=None):
        reason = decline_alpha_zero(self, dynamics.denoiser, grid)
        if reason:
            raise UserError("solver", self.name, hint=reason)
        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        lam_end = fused.lam(dynamics, grid.t_end)
        s, t_s = fused.lam(dynamics, grid.t_start), grid.t_start
        dynamics.prime([grid.t_start, grid.t_end])
        order = self.solver_order
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / order
        b2 = -(self.pcoeff + 2.0 * self.dcoeff) / order
        b3 = self.dcoeff / order
        h = abs(float(self.h_init))
        inv_errs = None                  # 1/error of this, the last and the one before accepted
        x_prev = x / dynamics.scalars(t_s)[0]
        n_steps = attempts = 0
        eps0 = None                      # eps_hat at lambda_s, kept over rejected attempts
        while s < lam_end - 1e-5:
            if attempts >= MAX_ATTEMPTS:
                raise RuntimeError(f"dpm_adaptive: no end after {attempts} attempted steps "
                                   f"(lambda = {s:.6g}, h = {h:.3g})")
            attempts += 1
            lam1 = min(lam_end, s + h)
            t1 = grid.t_end if lam1 == lam_end else t_of_lam(dynamics.schedule, lam1)
            st = LamStepper(dynamics, t_s, x, eps0)
            if order == 2:
                x_low, x_high = st.first(lam1, t1), st.second(lam1, 0.5, t1)
            else:
                x_low, x_high = st.second(lam1, 1.0 / 3.0, t1), st.third(lam1, t1=t1)
            eps0 = st.eps0()
            a1 = dynamics.scalars(t1)[0]
            xb_low, xb_high = x_low / a1, x_high / a1
            delta = torch.maximum(xb_low.abs(), x_prev.abs()).mul_(self.rtol).clamp_(min=self.atol)
            error = float(torch.linalg.norm((xb_low - xb_high) / delta)) / x.numel() ** 0.5
            inv = 1.0 / (error + 1e-8)
            if inv_errs is None:
                inv_errs = [inv, inv, inv]
            inv_errs[0] = inv
            factor = inv_errs[0] ** b1 * inv_errs[1] ** b2 * inv_errs[2] ** b3
            factor = 1.0 + math.atan(factor - 1.0)
            h *= factor
            if factor >= self.accept_safety:
                inv_errs[2], inv_errs[1] = inv_errs[1], inv_errs[0]
                x_prev, x = xb_low, x_high
                s = lam1
                t_s = t1
                eps0 = None
                n_steps += 1
        if grid.final == "zero":
            x = dynamics.denoise(t_s, x)
            n_steps += 1
        return finish(x, dynamics, nfe0, fp0, n_steps)
