"""SA-Solver (Xue, Yi, Huang, Qian, Lu, Liu & Zhang 2023, SA-Solver: Stochastic Adams Solver for
Fast Sampling of Diffusion Models, arXiv 2309.05019; diffusers ``SASolverScheduler``,
``algorithm_type="data_prediction"``).

With lambda = log(alpha/sigma), h = lambda_1 - lambda_0 and a stochasticity tau >= 0 on the step
(kappa = 1 + tau^2), the reverse SDE of the family dx = [..] dt + tau g dW, written in data
prediction, has the exact solution

    x_1 = e^{-tau^2 h} (sigma_1/sigma_0) x_0
          + alpha_1 kappa int_0^h e^{-kappa v} x0_hat(lambda_1 - v) dv
          + sigma_1 sqrt(1 - e^{-2 tau^2 h}) xi.

Stochastic Adams methods replace x0_hat by its Lagrange interpolant through stored model outputs
and integrate it exactly: the weight of D_k at node v_k = lambda_1 - lambda_k is
alpha_1 int_0^h kappa e^{-kappa v} l_k(v) dv, from the moments
kappa int_0^h e^{-kappa v} v^m dv = m! kappa^{-m} P(m + 1, kappa h) (P: the regularised lower
incomplete gamma function; exact for h = inf).
  SA-Predictor (order p): nodes lambda_0, lambda_-1, ..., lambda_{-p+1} (p model outputs).
  SA-Corrector (order c): after the model call at the predicted x_1, the same step is redone from
  its corrected start with the new output as one more node (nodes lambda_1, lambda_0, ...,
  lambda_{2-c}) and the *same* draw xi; the corrected x_1 starts the next step.  The stored output
  is the one at the predicted x_1, so the corrector costs no NFE (as UniPC's).
For order 2 diffusers (and the paper's code) add an O(h^3) term that "slightly improves few-step
quality": alpha_1 g(kappa h)/(kappa h_-1) (D_0 - D_-1) to the predictor and
alpha_1 g(kappa h)/(kappa h) (D_1 - D_0) to the corrector, g(z) = z^2/2 - z + 1 - e^{-z}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


def _g(z: float) -> float:
    """z^2/2 - z + 1 - e^{-z}, by its series where the terms cancel."""
    if abs(z) < 0.25:
        term, total = z ** 3 / 6.0, 0.0
        for n in range(3, 20):
            total += term
            term *= -z / (n + 1)
        return total
    return 0.5 * z * z - z - math.expm1(-z)


def adams_weights(nodes: list[float], h: float, kappa: float) -> list[float]:
    """w_k = kappa int_0^h e^{-kappa v} l_k(v) dv for the Lagrange basis l_k on ``nodes`` (v).

    One node: the weight is 1 - e^{-kappa h} (h may be inf)."""
    if len(nodes) == 1:
        return [-math.expm1(-kappa * h)]
    z = kappa * h
    moments = [math.factorial(m) * float(gammainc(m + 1, z)) / kappa ** m
               for m in range(len(nodes))]
    weights = []
    for k, vk in enumerate(nodes):
        others = [v for j, v in enumerate(nodes) if j != k]
        coef = np.poly(others)[::-1] / math.prod(vk - v for v in others)   # ascending powers
        weights.append(float(sum(c * m for c, m in zip(coef, moments))))
    return weights


@register_solver
@dataclass(frozen=True)
class SASolver(Solver):
    """SA-Solver: stochastic Adams predictor (order ``predictor_order``) and corrector (order
    ``corrector_order``), data prediction; module docstring for the update.

    Stochastic (``fresh`` or ``brownian`` noise), 1 NFE per step (the corrector reuses the next
    step's model call; the last prediction is not corrected).  ``tau`` is the stochasticity, on
    the steps that start at a noise level sigma/alpha in [``tau_sigma_min``, ``tau_sigma_max``]
    (0 elsewhere).  Defaults: tau = 1 on the whole trajectory (the standard reverse SDE);
    diffusers' default ``tau_func`` (tau = 1 for training timesteps 200-800 of the linear-beta VP
    model) is the window sigma/alpha in [0.7236, 25.736].  tau = 0 is the PF-ODE and a
    deterministic predictor-corrector multistep solver (exponential Adams-Bashforth /
    Adams-Moulton) of order min(corrector_order, predictor_order + 1): 2 at the defaults
    (the noise source is then not drawn from).  Measured on gmm64, karras, 64-512 steps: 2.0 for
    (p, c) = (1, 2) and (2, 2), 3.0 for (2, 3), 1.0 for (1, 1) (tested); (3, 3) and (3, 4) give
    3.4-3.5, still moving at 512 steps.  Warm-up as diffusers: step i uses orders
    at most i + 1 (predictor) and i + 2 (corrector); ``lower_order_final`` (default True) caps the
    predictor at the number of positive steps left (diffusers' rule).  On ``final="zero"`` grids
    the last positive step's prediction is denoised (diffusers ends at its first training noise
    level: our ``final="t_min"``).  Equals diffusers' ``SASolverScheduler`` (data_prediction) given
    the same draws (tests/test_samplers_more.py).  A node at lambda = -inf (alpha = 0, rectified
    flow at t = 1) and those before it are dropped from the interpolation (the limit of the
    formulas); from alpha = 0 the step is alpha_1 (1 - e^{-kappa h}) x0_hat + ... with h = inf.
    Only data prediction (diffusers' default) is implemented.

    Declared weak order 1: that of its lowest member (p = c = 1 with tau = 1 is an exponential
    Euler-Maruyama step); Xue et al. prove higher orders for larger p and c under their
    assumptions, not measured here.  Its N-vs-2N difference on one Brownian path falls as the
    steps double (tests/test_sde_convergence.py)."""

    predictor_order: int = 2
    corrector_order: int = 2
    tau: float = 1.0
    tau_sigma_min: float = 0.0
    tau_sigma_max: float = math.inf
    lower_order_final: bool = True

    name = "sa_solver"
    kind = "sde"
    weak_order = 1.0
    stages = 1
    stochastic = True
    infinite_ok = ("tau_sigma_max",)
    reference = ("Xue, Yi, Huang, Qian, Lu, Liu & Zhang 2023, SA-Solver: Stochastic Adams Solver "
                 "for Fast Sampling of Diffusion Models; diffusers SASolverScheduler")

    def __post_init__(self):
        for f in ("predictor_order", "corrector_order"):
            v = getattr(self, f)
            if type(v) is not int or not 1 <= v <= 4:
                raise ValueError(f"{f} must be 1, 2, 3 or 4, got {v!r}")
        v = self.tau
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
            raise ValueError(f"tau must be a finite number >= 0, got {v!r}")
        if not (0 <= self.tau_sigma_min <= self.tau_sigma_max):
            raise ValueError("need 0 <= tau_sigma_min <= tau_sigma_max, got "
                             f"{self.tau_sigma_min!r}, {self.tau_sigma_max!r}")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"lower_order_final must be true or false, "
                             f"got {self.lower_order_final!r}")

    def _tau_at(self, r0: float) -> float:
        return float(self.tau) if self.tau_sigma_min <= r0 <= self.tau_sigma_max else 0.0

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        n_pos = sum(1 for t1 in ts[1:] if t1 != 0.0)
        # hist: (lambda, x0_hat) newest first; base: the last prediction, to be corrected
        return {"i": 0, "n_pos": n_pos, "hist": (), "base": None}

    def _update(self, dynamics, t0, t1, x, nodes, tau, z, mod):
        """One stochastic Adams step from (t0, x) to t1 with the interpolation ``nodes`` =
        [(lambda, x0_hat), ...]; ``mod`` = (index pair, weight) of diffusers' order-2 term."""
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        a1, s1 = dynamics.scalars(t1)[:2]
        s0 = dynamics.scalars(t0)[1]
        kappa = 1.0 + tau * tau
        cx = s1 / s0 * (math.exp(-tau * tau * h) if tau > 0.0 else 1.0)
        w = adams_weights([l1 - lam for lam, _ in nodes], h, kappa)
        if mod is not None:
            w[0] += mod
            w[1] -= mod
        terms = [(cx, x)] + [(a1 * wk, d) for wk, (_, d) in zip(w, nodes)]
        if tau > 0.0:
            terms.append((s1 * math.sqrt(-math.expm1(-2.0 * tau * tau * h)), z))
        return lincomb(*terms)

    @staticmethod
    def _finite(nodes):
        """The first node, then the following ones up to the first at lambda = -inf."""
        out = nodes[:1]
        for node in nodes[1:]:
            if not math.isfinite(node[0]):
                break
            out.append(node)
        return out

    def step(self, dynamics, t0, t1, x, state, noise):
        d0 = dynamics.denoise(t0, x)
        l0 = fused.lam(dynamics, t0)
        i, hist = state["i"], state["hist"]
        base = state["base"]
        if base is not None:
            # SA-Corrector: redo the previous step with the new output as a node, same draw
            tp, xp, zp, taup, order_c = base
            nodes = self._finite([(l0, d0)] + list(hist))[:order_c]
            mod = None
            if len(nodes) == 2:
                lp = fused.lam(dynamics, tp)
                kh = (1.0 + taup * taup) * (l0 - lp)
                mod = _g(kh) / kh
            x = self._update(dynamics, tp, t0, xp, nodes, taup, zp, mod)
        hist = ((l0, d0),) + hist[: max(self.predictor_order, self.corrector_order - 1) - 1]
        left = state["n_pos"] - i
        p, c = self.predictor_order, self.corrector_order
        if self.lower_order_final:
            p, c = min(p, left), min(c, left + 1)
        p, c = min(p, i + 1), min(c, i + 2)
        tau = self._tau_at(fused.ratio(dynamics, t0))
        z = noise(t0, t1) if self.tau > 0.0 else None
        nodes = self._finite(list(hist))[:p]
        mod = None
        if len(nodes) == 2:
            l1 = fused.lam(dynamics, t1)
            kappa = 1.0 + tau * tau
            mod = _g(kappa * (l1 - l0)) / (kappa * (l0 - nodes[1][0]))
        x_new = self._update(dynamics, t0, t1, x, nodes, tau, z, mod)
        state = {"i": i + 1, "n_pos": state["n_pos"], "hist": hist,
                 "base": (t0, x, z, tau, c)}
        return x_new, state
