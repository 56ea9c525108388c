"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the PF-ODE in data prediction,

    x_1 = (sigma_1/sigma_0) x + alpha_1 int_0^h e^{-(h - tau)} x0_hat(lambda_0 + tau) dtau,

with lambda = log(alpha/sigma) and h = lambda_1 - lambda_0.  The first-order step is
(sigma_1/sigma_0) x + alpha_1 (1 - e^{-h}) x0_hat, finite from alpha = 0 (h = inf, e^{-h} = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.dpm_solver import t_of_lam
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

_REFERENCE = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++: Fast Solver for Guided Sampling "
              "of Diffusion Probabilistic Models; Crowson, k-diffusion")


def data_coefs(dynamics, t0: float, t1: float, h: float) -> tuple[float, float]:
    """(sigma_1/sigma_0, alpha_1 (1 - e^{-h})): the first-order data-prediction step is
    c_x x + c_0 x0_hat (h may be inf: alpha(t0) = 0)."""
    _, s0, _, _ = dynamics.scalars(t0)
    a1, s1, _, _ = dynamics.scalars(t1)
    return s1 / s0, a1 * -math.expm1(-h)


@register_solver
@dataclass(frozen=True)
class DPMSolverPP2S(Solver):
    """DPM-Solver++(2S), r = 1/2: a first-order data-prediction step to lambda_0 + h/2, then the
    full step with the midpoint's x0_hat (Lu et al. 2022b, Alg. 1).

    ODE, order 2, 2 NFE per step.  Equals k-diffusion's ``sample_dpmpp_2s_ancestral`` with eta = 0.
    A step from alpha = 0 (lambda = -inf; rectified flow at t = 1) is the first-order step -- its
    midpoint lambda_0 + h/2 is at t0 in the limit -- and costs 1 NFE."""

    name = "dpmpp_2s"
    kind = "ode"
    order = 2.0
    stages = 2
    reference = _REFERENCE

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        lams = [fused.lam(dynamics, t) for t in ts]
        mids = [l0 + 0.5 * (l1 - l0) for l0, l1, t1 in zip(lams[:-1], lams[1:], ts[1:])
                if t1 != 0.0 and not math.isinf(l0)]
        mid_ts = fused.t_of_lams(dynamics.schedule, mids)
        dynamics.prime(mid_ts)
        return {"t_of_lam": dict(zip(mids, mid_ts))}

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        if math.isinf(l0):
            cx, c0 = data_coefs(dynamics, t0, t1, h)
            return lincomb((cx, x), (c0, x0)), state
        r = 0.5
        l_s = l0 + r * h
        t_s = state["t_of_lam"].get(l_s) if state else None
        if t_s is None:
            t_s = t_of_lam(dynamics.schedule, l_s)
        cx, c0 = data_coefs(dynamics, t0, t_s, r * h)
        u = lincomb((cx, x), (c0, x0))
        del x0                                       # not needed below: free it for the model
        x0_s = dynamics.denoise(t_s, u)
        cx, c0 = data_coefs(dynamics, t0, t1, h)
        return lincomb((cx, x), (c0, x0_s)), state


@dataclass(frozen=True)
class _Multistep(Solver):
    """State: (lambda, x0_hat) of the previous grid points, newest first, plus the grid facts
    that ``lower_order_final`` needs."""

    kind = "ode"
    stages = 1
    reference = _REFERENCE

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return {"hist": (), "grid_steps": grid.steps, "final": grid.final,
                "t_last": float(grid.t[-1])}

    def _push(self, state, l0, x0, keep):
        state["hist"] = ((l0, x0),) + state["hist"][: keep - 1]
        return state


@register_solver
@dataclass(frozen=True)
class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): with r = h_last / h,
    x_1 = (sigma_1/sigma_0) x + alpha_1 (1 - e^{-h}) [(1 + 1/(2r)) D_0 - 1/(2r) D_-1].

    ODE, order 2, 1 NFE per step; the first step is first order.  Equals k-diffusion's
    ``sample_dpmpp_2m``.  ``lower_order_final`` (default True) takes the last step first order on
    grids of fewer than 15 steps that end at t_min (diffusers' ``DPMSolverMultistepScheduler``,
    which stabilises few-step sampling); on ``final="zero"`` grids the last step is the denoise step
    anyway, so the option changes nothing there.  After a step from alpha = 0 (lambda = -inf),
    r = inf and the next step is first order too (the limit of the formula)."""

    lower_order_final: bool = True

    name = "dpmpp_2m"
    order = 2.0

    def __post_init__(self):
        if not isinstance(self.lower_order_final, bool):
            raise ValueError("lower_order_final must be true or false, "
                             f"got {self.lower_order_final!r}")

    def step(self, dynamics, t0, t1, x, state, noise):
        return self.update(dynamics, t0, t1, x, state, dynamics.denoise(t0, x))

    def update(self, dynamics, t0, t1, x, state, x0):
        """The step from (t0, x) to t1 given x0_hat = D(x, t0) (shared with ``dpmpp_2m_cfg_pp``)."""
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        last = (self.lower_order_final and state["final"] == "t_min" and state["grid_steps"] < 15
                and t1 == state["t_last"])
        cx, c0 = data_coefs(dynamics, t0, t1, h)
        if state["hist"] and not last:
            l_prev, x0_prev = state["hist"][0]
            r = (l0 - l_prev) / h
            # x0_d = (1 + 1/(2r)) D_0 - 1/(2r) D_-1, folded into the step's coefficients
            x_new = lincomb((cx, x), (c0 * (1.0 + 0.5 / r), x0), (-c0 * (0.5 / r), x0_prev))
        else:
            x_new = lincomb((cx, x), (c0, x0))
        return x_new, self._push(state, l0, x0, 1)


@register_solver
@dataclass(frozen=True)
class DPMSolverPP3M(_Multistep):
    """DPM-Solver++(3M) with the update formula of k-diffusion (``sample_dpmpp_3m_sde`` with
    eta = 0), dpm-solver (``multistep_dpm_solver_third_update``) and diffusers, which agree on it:
    x_1 = first-order step + alpha_1 (phi_2 D1 - phi_3 D2), phi_2 = (e^{-h} - 1)/h + 1,
    phi_3 = phi_2/h - 1/2, with D1_0 = (D_0 - D_-1)/r0, D1_1 = (D_-1 - D_-2)/r1 (r0 = h_-1/h,
    r1 = h_-2/h), D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1)/(r0 + r1).

    ODE, 1 NFE per step; steps 1 and 2 are first and second order.  Declared order 2, not 3:
    D2 estimates h^2 x0_hat''/2 while the phi_3 term needs h^2 x0_hat'' (Lu et al. 2022b's
    quadratic Taylor term), so the x0_hat'' term has half its weight, the local error is O(h^3)
    and the method converges at order 2 (measured 1.9-2.0 on gmm64, karras and logsnr grids,
    64-512 steps).  With D2 doubled (``second_difference_factor = 2``) it is a genuine third-order
    method (measured 3.2), but less accurate below ~50 steps on gmm64 (about 2x the error at
    10-32 steps); this name keeps the algorithm every other implementation runs.  After a step
    from alpha = 0 (lambda = -inf) the ratios r = inf drop the infinite-distance history (the
    limit of the formula).

    The implementations differ in which steps run below third order.  ``variant="k-diffusion"``
    (default): steps 1 and 2 only (k-diffusion's ``sample_dpmpp_3m_sde``).
    ``variant="diffusers"``: ``DPMSolverMultistepScheduler(solver_order=3)`` with its defaults
    ``solver_type="midpoint"`` and ``lower_order_final=True`` -- its second-order steps use the
    midpoint weight (1 - e^{-h})/2 of ``dpmpp_2m`` where k-diffusion uses phi_2, and on grids of
    fewer than 15 steps the second-to-last step is at most second order and, on
    ``final="t_min"`` grids, the last step first order (on ``final="zero"`` grids the last step is
    the denoise step in both).  With ``lower_order_final=False`` diffusers still differs in the
    second step's weight: that is ``variant="diffusers", lower_order_final=False`` (the option
    only exists for this variant; k-diffusion's never lowers the order at the end)."""

    variant: str = "k-diffusion"
    lower_order_final: bool = True

    # weight of (D1_0 - D1_1)/(r0 + r1) in D2: 1 in k-diffusion / dpm-solver / diffusers
    # (order 2); 2 gives the third-order method
    second_difference_factor: ClassVar[float] = 1.0

    name = "dpmpp_3m"
    order = 2.0
    VARIANTS: ClassVar[tuple[str, ...]] = ("k-diffusion", "diffusers")

    def __post_init__(self):
        if self.variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(self.VARIANTS)}, "
                             f"got {self.variant!r}")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError("lower_order_final must be true or false, "
                             f"got {self.lower_order_final!r}")
        if not self.lower_order_final and self.variant != "diffusers":
            raise ValueError("lower_order_final=false needs variant=diffusers (the "
                             "k-diffusion variant never lowers the order at the end)")

    def init_state(self, dynamics, x, grid):
        state = super().init_state(dynamics, x, grid)
        state["t_second_last"] = float(grid.t[-2])
        return state

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        a1 = dynamics.scalars(t1)[0]
        cx, c0 = data_coefs(dynamics, t0, t1, h)
        hist = state["hist"]
        if self.variant == "diffusers" and self.lower_order_final and state["grid_steps"] < 15:
            # diffusers' lower_order_final: the second-to-last step at most second order, the
            # last one (into t_min) first order
            if t1 == state["t_last"] and state["final"] == "t_min":
                hist = ()
            elif t1 == state["t_second_last"]:
                hist = hist[:1]
        # first-order step + alpha_1 (phi_2 D1 - phi_3 D2): every term is linear in
        # (x, D_0, D_-1, D_-2), so the update is one combination with per-step weights
        if not hist:
            x_new = lincomb((cx, x), (c0, x0))
        else:
            phi_2 = math.expm1(-h) / h + 1.0
            A = a1 * phi_2
            l_1, x0_1 = hist[0]
            r0 = (l0 - l_1) / h
            if len(hist) == 1 and self.variant == "diffusers":
                # diffusers' second-order step (solver_type="midpoint") is dpmpp_2m's
                x_new = lincomb((cx, x), (c0 * (1.0 + 0.5 / r0), x0), (-c0 * (0.5 / r0), x0_1))
            elif len(hist) == 1:
                # + A (D_0 - D_-1) / r0
                x_new = lincomb((cx, x), (c0 + A / r0, x0), (-A / r0, x0_1))
            else:
                l_2, x0_2 = hist[1]
                r1 = (l_1 - l_2) / h
                phi_3 = phi_2 / h - 0.5
                # d1_0 = (D_0 - D_-1)/r0, d1_1 = (D_-1 - D_-2)/r1, diff = d1_0 - d1_1:
                # A d1 - B d2 = A d1_0 + k diff, k = (A r0 - B f) / (r0 + r1)
                k = (A * r0 - a1 * phi_3 * self.second_difference_factor) / (r0 + r1)
                w0 = (A + k) / r0
                w2 = k / r1
                x_new = lincomb((cx, x), (c0 + w0, x0), (-w0 - w2, x0_1), (w2, x0_2))
        return x_new, self._push(state, l0, x0, 2)
