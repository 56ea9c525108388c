"""SEEDS (Gonzalez, Fernandez, Ramamonjisoa, Jehanno & Gendron 2023, SEEDS: Exponential SDE
Solvers for Fast High-Quality Sampling from Diffusion Models, NeurIPS; arXiv 2305.14267;
ComfyUI ``sample_seeds_2``, ``sample_seeds_3``): stochastic exponential Runge-Kutta methods in
data prediction.

With lambda = log(alpha/sigma), h = lambda_1 - lambda_0 and the stochasticity ``eta``, the reverse
SDE with g^2 = eta 2 sigma^2 d/dt log(sigma/alpha) has, for a frozen x0_hat, the exact step

    x(lambda_0 + c h) = (sigma_c/sigma_0) e^{-eta c h} x + alpha_c (1 - e^{-(1+eta) c h}) x0_hat
                        + sigma_c sqrt(1 - e^{-2 eta c h}) xi

(``dpmpp_2m_sde``'s first-order step).  A SEEDS step evaluates stages at lambda_0 + c_k h
(c = r for SEEDS-2; r_1, r_2 for SEEDS-3), each from x with this linear part and the stage
weights of the deterministic method, with H = (1 + eta) h in place of h:

  SEEDS-2, ``solver_type="phi_1"`` (default): x_1 uses (1 - 1/(2r)) D_0 + 1/(2r) D_1 with the
    first-order weight alpha_1 (1 - e^{-H});
  SEEDS-2, ``"phi_2"``: alpha_1 [(phi_1 - phi_2/r) D_0 + phi_2/r D_1], with (h phi_k in the
    usual notation) phi_1(H) = 1 - e^{-H}, phi_2(H) = 1 - phi_1(H)/H;
  SEEDS-3: stage 2 with alpha_s2 [(phi_1(r_2 H) - (r_2/r_1) phi_2(r_2 H)) D_0
    + (r_2/r_1) phi_2(r_2 H) D_1], then x_1 with (phi_1 - phi_2/r_2) D_0 + phi_2/r_2 D_2.

Noise: the stage's draw xi_1 (standard normal for the path from t_0 to the stage) enters the
stage input as sigma_c sqrt(1 - e^{-2 eta c h}) xi_1, and the end of the step gets the same
noise carried forward plus a fresh piece over the rest of the step,

    n_1 = sqrt(1 - e^{-2 eta c h}) xi_1 e^{-(1 - c) eta h} + sqrt(1 - e^{-2 (1 - c) eta h}) xi_2,

whose variance is 1 - e^{-2 eta h}, the exact one (SEEDS-3 chains three pieces).  Draws are
``noise(t_a, t_b)`` over the consecutive sub-intervals of the step, so with ``brownian`` noise
they are independent increments of one path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from samplerbench.models.dynamics import ReverseSDE
from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.dpm_solver import t_of_lam
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

_REFERENCE = ("Gonzalez, Fernandez, Ramamonjisoa, Jehanno & Gendron 2023, SEEDS: Exponential SDE "
              "Solvers for Fast High-Quality Sampling from Diffusion Models; ComfyUI {}")
SOLVER_TYPES = ("phi_1", "phi_2")


def _phi1(z: float) -> float:
    """1 - e^{-z} (z may be inf)."""
    return -math.expm1(-z)


def _phi2(z: float) -> float:
    """(e^{-z} - 1 + z) / z = 1 - phi1(z)/z, by its series for small z (cancellation)."""
    if abs(z) < 1e-4:
        return z / 2.0 - z * z / 6.0 + z ** 3 / 24.0
    if math.isinf(z):
        return 1.0
    return (math.expm1(-z) + z) / z


def _check_number(name, v, lo=0.0, hi=math.inf, lo_open=False):
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    if bad or v < lo or (lo_open and v == lo) or v > hi:
        rng = (f"in ({lo:g}, {hi:g}]" if hi < math.inf
               else f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise ValueError(f"{name} must be a finite number {rng}, got {v!r}")


@dataclass(frozen=True)
class _Seeds(Solver):
    """Shared machinery: stage times, the linear part, the chained noise."""

    eta: float = 1.0
    s_noise: float = 1.0

    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stochastic = True
    fractions: ClassVar[tuple[float, ...]] = ()

    def make_dynamics(self, denoiser, cond=None):
        # SEEDS' (ComfyUI's) eta multiplies g^2: the reverse-SDE family's eta is its square root
        return ReverseSDE(denoiser, eta=math.sqrt(self.eta), cond=cond)

    def _fractions(self) -> tuple[float, ...]:
        return self.fractions

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        lams = [fused.lam(dynamics, t) for t in ts]
        stage = [l0 + c * (l1 - l0) for l0, l1, t1 in zip(lams[:-1], lams[1:], ts[1:])
                 if t1 != 0.0 and not math.isinf(l0) for c in self._fractions()]
        stage_ts = fused.t_of_lams(dynamics.schedule, stage)
        dynamics.prime(stage_ts)
        return {"t_of_lam": dict(zip(stage, stage_ts))}

    def _t(self, dynamics, state, lam_: float) -> float:
        t = state["t_of_lam"].get(lam_) if state else None
        return t if t is not None else t_of_lam(dynamics.schedule, lam_)

    def _inject(self) -> bool:
        return self.eta > 0.0 and self.s_noise > 0.0

    def _linear(self, dynamics, t0, tc, x, c, h):
        """(coefficient of x, alpha_c, sigma_c) of the linear part of the step to lambda_0 + c h."""
        _, s0, _, _ = dynamics.scalars(t0)
        ac, sc, _, _ = dynamics.scalars(tc)
        eta = float(self.eta)
        return sc / s0 * (math.exp(-eta * c * h) if eta > 0.0 else 1.0), ac, sc

    def _first_order(self, dynamics, t0, t1, x, x0, noise, h):
        """The one-stage step (from alpha = 0, lambda_0 = -inf: the stages sit at t0)."""
        cx, a1, s1 = self._linear(dynamics, t0, t1, x, 1.0, h)
        terms = [(cx, x), (a1 * _phi1((1.0 + self.eta) * h), x0)]
        if self._inject():
            terms.append((s1 * self.s_noise * math.sqrt(_phi1(2.0 * self.eta * h)),
                          noise(t0, t1)))
        return lincomb(*terms)

    def _noise(self, carried, c_from, c_to, h, t_a, t_b, noise):
        """(standard-normal-scaled noise at lambda_0 + c_to h, its terms): the noise at c_from
        decayed by e^{-eta (c_to - c_from) h} plus a fresh draw over [t_a, t_b]."""
        seg = (c_to - c_from) * self.eta * h
        fresh = (math.sqrt(_phi1(2.0 * seg)), noise(t_a, t_b))
        if carried is None:
            return [fresh]
        decay = math.exp(-seg)
        return [(w * decay, z) for w, z in carried] + [fresh]

    def _validate(self):
        _check_number("eta", self.eta)
        _check_number("s_noise", self.s_noise)


@register_solver
@dataclass(frozen=True)
class SEEDS2(_Seeds):
    """SEEDS-2 (ComfyUI ``seeds_2``): two-stage stochastic exponential RK, stage at
    lambda_0 + r h (module docstring).

    Stochastic (Ito, additive noise; ``fresh`` or ``brownian``), 2 NFE per step (1 from
    alpha = 0, where the step is the first-order one).  ``eta`` (1: the standard reverse SDE;
    it multiplies g^2, so the reverse-SDE family's eta is sqrt(eta)) and ``s_noise`` are
    ComfyUI's; ``r`` in (0, 1] (0.5), ``solver_type`` "phi_1" (default) or "phi_2".
    eta = 0 is deterministic (no draws): with ``phi_1`` and r = 1/2 it is DPM-Solver++(2S)
    (``dpmpp_2s``, tested to rounding), with ``phi_2`` the second-order exponential RK with
    weights phi_1 - phi_2/r, phi_2/r (r = 1: ComfyUI's ``exp_heun_2_x0``); both ODE order 2
    (measured on gmm64).  Declared strong/weak order 1: the noise is the normalised Brownian
    increment of each sub-interval, not its exponentially weighted integral (first order, as
    ``dpmpp_2m_sde``); weak error checked on gmm2d moments (tests)."""

    r: float = 0.5
    solver_type: str = "phi_1"

    name = "seeds_2"
    stages = 2
    reference = _REFERENCE.format("sample_seeds_2")

    def __post_init__(self):
        self._validate()
        _check_number("r", self.r, 0.0, 1.0, lo_open=True)
        if self.solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {', '.join(SOLVER_TYPES)}, "
                             f"got {self.solver_type!r}")

    def _fractions(self):
        return (float(self.r),)

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        if math.isinf(l0):
            return self._first_order(dynamics, t0, t1, x, x0, noise, h), state
        r, eta, inject = float(self.r), float(self.eta), self._inject()
        big_h = (1.0 + eta) * h
        t_s = self._t(dynamics, state, l0 + r * h)
        cx, a_s, s_s = self._linear(dynamics, t0, t_s, x, r, h)
        n = self._noise(None, 0.0, r, h, t0, t_s, noise) if inject else []
        u = lincomb((cx, x), (a_s * _phi1(r * big_h), x0),
                    *[(s_s * self.s_noise * w, z) for w, z in n])
        x0_s = dynamics.denoise(t_s, u)
        del u
        cx, a1, s1 = self._linear(dynamics, t0, t1, x, 1.0, h)
        if self.solver_type == "phi_1":
            f = 1.0 / (2.0 * r)
            w0, w1 = a1 * _phi1(big_h) * (1.0 - f), a1 * _phi1(big_h) * f
        else:
            b2 = _phi2(big_h) / r
            w0, w1 = a1 * (_phi1(big_h) - b2), a1 * b2
        if inject:
            n = self._noise(n, r, 1.0, h, t_s, t1, noise)
        return lincomb((cx, x), (w0, x0), (w1, x0_s),
                       *[(s1 * self.s_noise * w, z) for w, z in n]), state


@register_solver
@dataclass(frozen=True)
class SEEDS3(_Seeds):
    """SEEDS-3 (ComfyUI ``seeds_3``): three-stage stochastic exponential RK, stages at
    lambda_0 + r_1 h and lambda_0 + r_2 h (module docstring).

    Stochastic (Ito, additive noise), 3 NFE per step (1 from alpha = 0).  ``eta``, ``s_noise``
    as ``seeds_2``; ``r_1`` (1/3) < ``r_2`` (2/3) in (0, 1].  eta = 0 is deterministic: the
    data-prediction DPM-Solver-3 (DPM-Solver++(3S), ``singlestep_dpm_solver_third_update`` of
    Lu et al.'s dpm-solver with ``solver_type="dpmsolver"``; tested against a re-implementation),
    ODE order 3 (measured on gmm64).  Declared strong/weak order 1 (as ``seeds_2``)."""

    r_1: float = 1.0 / 3.0
    r_2: float = 2.0 / 3.0

    name = "seeds_3"
    stages = 3
    reference = _REFERENCE.format("sample_seeds_3")

    def __post_init__(self):
        self._validate()
        _check_number("r_1", self.r_1, 0.0, 1.0, lo_open=True)
        _check_number("r_2", self.r_2, 0.0, 1.0, lo_open=True)
        if not self.r_1 < self.r_2:
            raise ValueError(f"need r_1 < r_2, got {self.r_1!r}, {self.r_2!r}")

    def _fractions(self):
        return (float(self.r_1), float(self.r_2))

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        if math.isinf(l0):
            return self._first_order(dynamics, t0, t1, x, x0, noise, h), state
        r1, r2, eta, inject = float(self.r_1), float(self.r_2), float(self.eta), self._inject()
        big_h = (1.0 + eta) * h
        sn = self.s_noise
        # stage 1
        t_1 = self._t(dynamics, state, l0 + r1 * h)
        cx, a_1, s_1 = self._linear(dynamics, t0, t_1, x, r1, h)
        n = self._noise(None, 0.0, r1, h, t0, t_1, noise) if inject else []
        u = lincomb((cx, x), (a_1 * _phi1(r1 * big_h), x0), *[(s_1 * sn * w, z) for w, z in n])
        x0_1 = dynamics.denoise(t_1, u)
        # stage 2
        t_2 = self._t(dynamics, state, l0 + r2 * h)
        cx, a_2, s_2 = self._linear(dynamics, t0, t_2, x, r2, h)
        c2 = r2 / r1 * _phi2(r2 * big_h)
        if inject:
            n = self._noise(n, r1, r2, h, t_1, t_2, noise)
        u = lincomb((cx, x), (a_2 * (_phi1(r2 * big_h) - c2), x0), (a_2 * c2, x0_1),
                    *[(s_2 * sn * w, z) for w, z in n])
        x0_2 = dynamics.denoise(t_2, u)
        del u, x0_1
        # the step
        cx, a1, s1 = self._linear(dynamics, t0, t1, x, 1.0, h)
        b3 = _phi2(big_h) / r2
        if inject:
            n = self._noise(n, r2, 1.0, h, t_2, t1, noise)
        return lincomb((cx, x), (a1 * (_phi1(big_h) - b3), x0), (a1 * b3, x0_2),
                       *[(s1 * sn * w, z) for w, z in n]), state
