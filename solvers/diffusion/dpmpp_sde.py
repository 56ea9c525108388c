"""Stochastic DPM-Solver++ samplers: ``dpmpp_2m_sde`` (midpoint / heun), ``dpmpp_3m_sde`` and
``dpmpp_sde`` (the 2S SDE variant), as k-diffusion implements them, in x-space for any schedule.

With lambda = log(alpha/sigma), h = lambda_1 - lambda_0 and k-diffusion's eta, the first-order
step of the multistep SDE samplers is the exact solution of the linear part of the reverse SDE
with g^2 = eta 2 sigma^2 d/dt log(sigma/alpha) (Lu et al. 2022b, SDE-DPM-Solver++):

    x_1 = (sigma_1/sigma_0) e^{-eta h} x + alpha_1 (1 - e^{-(1 + eta) h}) x0_hat
          + sigma_1 sqrt(1 - e^{-2 eta h}) z,

so k-diffusion's ``eta`` is the square of the reverse-SDE family's eta (``make_dynamics`` builds
the ReverseSDE with sqrt(eta)); eta = 1 is the standard reverse SDE for all of them.  Every
formula is finite from alpha = 0 (lambda = -inf, h = inf, e^{-h} = 0): that step keeps no memory
of x, x_1 = alpha_1 x0_hat + sigma_1 z (eta > 0), and the following step's ratio
h_last / h = inf drops the history term (the limit of the formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.models.dynamics import ReverseSDE
from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion.dpm_solver import coeffs, lam, t_of_lam
from samplerbench.solvers.diffusion.euler_ancestral import ancestral_split
from samplerbench.solvers.registry import register_solver

_REFERENCE = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++: Fast Solver for Guided Sampling "
              "of Diffusion Probabilistic Models (SDE-DPM-Solver++); Crowson, k-diffusion")
SOLVER_TYPES = ("midpoint", "heun")


def _check_eta_noise(eta, s_noise):
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if not (isinstance(s_noise, (int, float)) and s_noise >= 0):
        raise ValueError(f"s_noise must be a number >= 0, got {s_noise!r}")


def _sde_first_order(sched, t0, t1, x, x0, h, eta):
    """(sigma_1/sigma_0) e^{-eta h} x + alpha_1 (1 - e^{-(1+eta) h}) x0_hat (h may be inf)."""
    a1, s1 = coeffs(sched, t1)
    _, s0 = coeffs(sched, t0)
    decay = math.exp(-eta * h) if eta > 0.0 else 1.0
    return (s1 / s0 * decay) * x + (a1 * -math.expm1(-(1.0 + eta) * h)) * x0


def _sde_noise_scale(sched, t1, h, eta, s_noise):
    """sigma_1 sqrt(1 - e^{-2 eta h}) s_noise."""
    _, s1 = coeffs(sched, t1)
    return s1 * math.sqrt(-math.expm1(-2.0 * eta * h)) * s_noise


@dataclass(frozen=True)
class _DPMSDE(Solver):
    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    stochastic = True
    reference = _REFERENCE

    def make_dynamics(self, denoiser, cond=None):
        # k-diffusion's eta multiplies g^2: the reverse-SDE family's eta is its square root
        return ReverseSDE(denoiser, eta=math.sqrt(self.eta), cond=cond)

    def init_state(self, dynamics, x, grid):
        return {"hist": ()}          # ((x0_hat, h), ...) of the previous steps, newest first


@register_solver
@dataclass(frozen=True)
class DPMSolverPP2MSDE(_DPMSDE):
    """DPM-Solver++(2M) SDE (k-diffusion ``sample_dpmpp_2m_sde``): the first-order SDE step above
    plus a multistep correction with r = h_last / h,
      midpoint: + alpha_1 (1 - e^{-(1+eta) h}) / (2 r) (D_0 - D_-1)
      heun:     + alpha_1 ((1 - e^{-(1+eta) h}) / (-(1+eta) h) + 1) / r (D_0 - D_-1).

    Stochastic (Ito, additive noise), 1 NFE per step; strong order 1 on a Brownian path (the
    normalised increment stands in for the exponentially weighted noise integral), weak order 1;
    with eta = 0 the midpoint variant is the ODE solver ``dpmpp_2m`` (order 2).  ``eta`` and
    ``s_noise`` are k-diffusion's (see the module docstring for eta)."""

    eta: float = 1.0
    s_noise: float = 1.0
    solver_type: str = "midpoint"

    name = "dpmpp_2m_sde"

    def __post_init__(self):
        _check_eta_noise(self.eta, self.s_noise)
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {', '.join(SOLVER_TYPES)}, "
                             f"got {self.solver_type!r}")

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0 = dynamics.denoise(t0, x)
        h = lam(sched, t1) - lam(sched, t0)
        eta = float(self.eta)
        x_new = _sde_first_order(sched, t0, t1, x, x0, h, eta)
        if state["hist"]:
            x0_prev, h_last = state["hist"][0]
            r = h_last / h
            a1, _ = coeffs(sched, t1)
            big_h = (1.0 + eta) * h
            if self.solver_type == "heun":
                c = -math.expm1(-big_h) / -big_h + 1.0
            else:
                c = 0.5 * -math.expm1(-big_h)
            x_new = x_new + (a1 * c / r) * (x0 - x0_prev)
        if eta > 0.0 and self.s_noise > 0.0:
            x_new = x_new + _sde_noise_scale(sched, t1, h, eta, self.s_noise) * noise(t0, t1)
        return x_new, {"hist": ((x0, h),)}


@register_solver
@dataclass(frozen=True)
class DPMSolverPP3MSDE(_DPMSDE):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): the first-order SDE step plus
    alpha_1 (phi_2 D1 - phi_3 D2), with phi_2 = (e^{-H} - 1)/H + 1, phi_3 = phi_2/H - 1/2,
    H = (1 + eta) h, and D1, D2 the divided differences of ``dpmpp_3m`` (r0 = h_-1/h,
    r1 = h_-2/h).  Steps 1 and 2 are first and second order.

    Stochastic (Ito, additive noise), 1 NFE per step; strong order 1 on a Brownian path, weak
    order 1; with eta = 0 it is ``dpmpp_3m`` (whose declared ODE order is 2, see there)."""

    eta: float = 1.0
    s_noise: float = 1.0

    name = "dpmpp_3m_sde"

    def __post_init__(self):
        _check_eta_noise(self.eta, self.s_noise)

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0 = dynamics.denoise(t0, x)
        h = lam(sched, t1) - lam(sched, t0)
        eta = float(self.eta)
        x_new = _sde_first_order(sched, t0, t1, x, x0, h, eta)
        hist = state["hist"]
        if hist:
            a1, _ = coeffs(sched, t1)
            big_h = (1.0 + eta) * h
            phi_2 = math.expm1(-big_h) / big_h + 1.0
            x0_1, h_1 = hist[0]
            r0 = h_1 / h
            d1_0 = (x0 - x0_1) / r0
            if len(hist) == 1:
                x_new = x_new + (a1 * phi_2) * d1_0
            else:
                x0_2, h_2 = hist[1]
                r1 = h_2 / h
                d1_1 = (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / big_h - 0.5
                x_new = x_new + (a1 * phi_2) * d1 - (a1 * phi_3) * d2
        if eta > 0.0 and self.s_noise > 0.0:
            x_new = x_new + _sde_noise_scale(sched, t1, h, eta, self.s_noise) * noise(t0, t1)
        return x_new, {"hist": ((x0, h),) + hist[:1]}


@register_solver
@dataclass(frozen=True)
class DPMSolverPPSDE(Solver):
    """DPM-Solver++ SDE, the two-stage variant (k-diffusion ``sample_dpmpp_sde``, r = 1/2): an
    ancestral first-order data step to lambda_s = lambda_0 + r h with noise over [t_s, t_0], a
    second model call there, then an ancestral step from t_0 to t_1 with
    x0_hat_d = (1 - 1/(2r)) x0_hat_0 + 1/(2r) x0_hat_s and noise over [t_1, t_0].  The ancestral
    split (sigma_down, sigma_up) of each stage is ``euler_ancestral``'s, with this ``eta``.

    Stochastic, 2 NFE per step; weak order 1, strong order 1 on a Brownian path (the two draws of
    a step are the path's increments over [t_s, t_0] and [t_1, t_0], correlated as they must be;
    with fresh noise they are independent, as with k-diffusion's default sampler); eta = 0 is the
    ODE solver ``dpmpp_2s``.  Here the reverse-SDE family's eta is this eta (ancestral steps).
    A step from alpha = 0 (lambda = -inf) is the first-order ancestral step, 1 NFE and one draw."""

    eta: float = 1.0
    s_noise: float = 1.0
    r: float = 0.5

    name = "dpmpp_sde"
    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stages = 2
    stochastic = True
    reference = _REFERENCE

    def __post_init__(self):
        _check_eta_noise(self.eta, self.s_noise)
        if not (isinstance(self.r, (int, float)) and 0.0 < self.r < 1.0):
            raise ValueError(f"r must lie in (0, 1), got {self.r!r}")

    def _ancestral(self, sched, t0, t_to, x, x0, noise, t_noise):
        """Data-prediction step from t0 to the ratio sigma_down of (ratio(t0) -> ratio(t_to)),
        plus sigma_up noise, returned at t_to (x-space).  x is taken at t0."""
        r0, r_to = float(sched.ratio(t0)), float(sched.ratio(t_to))
        down, up = ancestral_split(r0, r_to, self.eta)
        a_to = float(sched.alpha(t_to))
        _, s0 = coeffs(sched, t0)
        # xbar_d = (down/r0) xbar + (1 - down/r0) x0_hat, with (down/r0) xbar = (down/sigma_0) x
        frac = 0.0 if math.isinf(r0) else down / r0
        out = (a_to * down / s0) * x + (a_to * (1.0 - frac)) * x0
        if up > 0.0 and self.s_noise > 0.0:
            out = out + (a_to * up * self.s_noise) * noise(t0, t_noise)
        return out

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0 = dynamics.denoise(t0, x)
        l0, l1 = lam(sched, t0), lam(sched, t1)
        if math.isinf(l0):
            return self._ancestral(sched, t0, t1, x, x0, noise, t1), state
        h = l1 - l0
        t_s = t_of_lam(sched, l0 + self.r * h)
        x_s = self._ancestral(sched, t0, t_s, x, x0, noise, t_s)
        x0_s = dynamics.denoise(t_s, x_s)
        fac = 0.5 / self.r
        x0_d = (1.0 - fac) * x0 + fac * x0_s
        return self._ancestral(sched, t0, t1, x, x0_d, noise, t1), state


@register_solver
@dataclass(frozen=True)
class DPMSolverPP2SAncestral(Solver):
    """DPM-Solver++(2S) ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``): split the step from
    sigmabar_0 = sigma_0/alpha_0 to sigmabar_1 into sigma_down and sigma_up as ``euler_ancestral``
    (this ``eta``), take a DPM-Solver++(2S) step (``dpmpp_2s``, r = 1/2) from sigmabar_0 to
    sigma_down: with sigma_s = sqrt(sigmabar_0 sigma_down) (lambda midway),
        xbar_s = (sigma_s/sigmabar_0) xbar + (1 - sigma_s/sigmabar_0) x0_hat(xbar, sigmabar_0),
        xbar_down = (sigma_down/sigmabar_0) xbar + (1 - sigma_down/sigmabar_0) x0_hat(xbar_s, sigma_s),
    then xbar_1 = xbar_down + s_noise sigma_up z and x_1 = alpha_1 xbar_1.

    Stochastic (takes a noise source, ``fresh`` or ``brownian``), 2 NFE per step; weak order 1
    at eta = 1; eta = 0 is the ODE solver ``dpmpp_2s`` (order 2).  With fresh noise it does not
    converge pathwise.  Equals ``sample_dpmpp_2s_ancestral`` on the VE view of any model, given the
    same draws (k-diffusion draws noise on every step into sigma > 0, also when sigma_up = 0;
    this one draws only when sigma_up > 0).  A step from alpha = 0 (lambda = -inf) or with
    sigma_down = 0 is the first-order ancestral step, 1 NFE."""

    eta: float = 1.0
    s_noise: float = 1.0

    name = "dpmpp_2s_ancestral"
    kind = "sde"
    weak_order = 1.0
    stages = 2
    stochastic = True
    reference = ("Lu, Zhou, Bao, Chen, Li & Zhu 2022, DPM-Solver++ (2S); Crowson, k-diffusion "
                 "sample_dpmpp_2s_ancestral")

    def __post_init__(self):
        _check_eta_noise(self.eta, self.s_noise)

    def step(self, dynamics, t0, t1, x, state, noise):
        sched = dynamics.schedule
        x0 = dynamics.denoise(t0, x)
        r0, r1 = float(sched.ratio(t0)), float(sched.ratio(t1))
        down, up = ancestral_split(r0, r1, float(self.eta))
        a1, _ = coeffs(sched, t1)
        _, s0 = coeffs(sched, t0)
        if not (math.isinf(r0) or down == 0.0):
            r_s = math.exp(-0.5 * (-math.log(r0) - math.log(down)))
            t_s = float(sched.t_from_ratio(r_s))
            a_s, _ = coeffs(sched, t_s)
            x_s = (a_s * r_s / s0) * x + (a_s * -math.expm1(math.log(r_s / r0))) * x0
            x0 = dynamics.denoise(t_s, x_s)
        frac = 0.0 if math.isinf(r0) else down / r0
        out = (a1 * down / s0) * x + (a1 * (1.0 - frac)) * x0
        if up > 0.0 and self.s_noise > 0.0:
            out = out + (a1 * up * self.s_noise) * noise(t0, t1)
        return out, state
