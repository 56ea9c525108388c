"""Heun++ 2 (ComfyUI ``sample_heunpp2``, from Carzit's sd-webui-samplers-scheduler), deterministic.

In the EDM variables xbar = x/alpha, sigmabar = sigma/alpha, where the PF-ODE is
dxbar/dsigmabar = d(xbar, sigmabar) = eps_hat, a step from sigmabar_i with the grid's next two
points sigmabar_{i+1}, sigmabar_{i+2} takes Euler predictions x_2 = xbar + (sigmabar_{i+1} -
sigmabar_i) d_1 and x_3 = x_2 + (sigmabar_{i+2} - sigmabar_{i+1}) d_2 (d_2 at x_2, d_3 at x_3),
and steps with a weighted slope whose weights follow the noise level relative to the grid's
first point sigmabar_0:

    xbar_{i+1} = xbar + (sigmabar_{i+1} - sigmabar_i) (w1 d_1 + w2 d_2 + w3 d_3),
    w2 = sigmabar_{i+1}/(3 sigmabar_0), w3 = sigmabar_{i+2}/(3 sigmabar_0), w1 = 1 - w2 - w3.

The second-to-last step has no sigmabar_{i+2}: w2 = sigmabar_{i+1}/(2 sigmabar_0), w1 = 1 - w2
(2 NFE); the last step is Euler (1 NFE; into t = 0 it is the denoise step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class HeunPP2(Solver):
    """Heun++ 2 (ComfyUI ``heunpp2`` at s_churn = 0): module docstring for the update.

    ODE, 3 NFE per step, except 2 on the second-to-last and 1 on the last step of the grid
    (``stages`` = 3; ``declared_nfe`` counts the last two).  Declared order 1: the weights are not
    those of a second-order rule -- they go to (1, 0, 0), plain Euler, as sigmabar / sigmabar_0
    -> 0 and are (1/3, 1/3, 1/3) only at the grid's start -- so the method is consistent but first
    order (measured ~1 on gmm64); it is a large-step heuristic, more accurate than Euler at high
    noise.  The weights hang on the grid's first point, so the same interval is integrated
    differently on grids with different starts.  From alpha = 0 (sigmabar_0 = inf: rectified flow
    at t = 1) the weights are (1, 0, 0) on every step: DDIM at 3 NFE per step.  The churn
    variant (s_churn > 0, stochastic) is not offered.  No installable peer."""

    name = "heunpp2"
    kind = "ode"
    order = 1.0
    stages = 3                  # but 2 and 1 on the last two steps: declared_nfe counts them
    reference = ("Carzit, sd-webui-samplers-scheduler (Heun++ 2); ComfyUI sample_heunpp2; "
                 "Karras et al. 2022 (Heun in sigma/alpha)")

    def declared_nfe(self, grid):
        # the last step is Euler (into 0: the denoise step), the one before it Heun, the others
        # three calls
        n = grid.steps
        return min(n, 1) + 2 * min(max(n - 1, 0), 1) + 3 * max(n - 2, 0)

    def init_state(self, dynamics, x, grid):
        ts = prime(dynamics, grid)
        return {"ts": ts, "index": {t: i for i, t in enumerate(ts)},
                "r0": fused.ratio(dynamics, ts[0])}

    def _euler(self, dynamics, t0, t1, x, x0):
        """alpha_1 (xbar + (r1 - r0) eps_hat) = alpha_1 (x0_hat + r1 eps_hat); finite from
        alpha_0 = 0."""
        a0, s0, _, _ = dynamics.scalars(t0)
        a1 = dynamics.scalars(t1)[0]
        c = a1 * fused.ratio(dynamics, t1) / s0
        return lincomb((c, x), (a1 - c * a0, x0))

    def step(self, dynamics, t0, t1, x, state, noise):
        ts = state["ts"]
        i = state["index"][t0]
        end = len(ts) - 1
        x0 = dynamics.denoise(t0, x)
        if i + 1 == end:                                  # last step: Euler
            return self._euler(dynamics, t0, t1, x, x0), state
        r0_grid = state["r0"]
        x2 = self._euler(dynamics, t0, t1, x, x0)
        x0_2 = dynamics.denoise(t1, x2)
        r1 = fused.ratio(dynamics, t1)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        dr = r1 - fused.ratio(dynamics, t0)
        # alpha_1 (xbar_0 + dr sum_k w_k eps_k): eps_k = (x_k - alpha_k x0_k)/sigma_k in x-space
        if i + 2 == end:                                  # second to last: two-point weights
            w2 = 0.0 if math.isinf(r0_grid) else r1 / (2.0 * r0_grid)
            terms = [(1.0 - w2, x, x0, t0), (w2, x2, x0_2, t1)]
        else:
            t2 = ts[i + 2]
            a2 = dynamics.scalars(t2)[0]
            r2 = fused.ratio(dynamics, t2)
            # x_3 = alpha_2 (xbar_2 + (r2 - r1) eps_2), from x_2 at t1
            c = a2 * r2 / s1
            x3 = lincomb((c, x2), (a2 - c * a1, x0_2))
            x0_3 = dynamics.denoise(t2, x3)
            w2 = 0.0 if math.isinf(r0_grid) else r1 / (3.0 * r0_grid)
            w3 = 0.0 if math.isinf(r0_grid) else r2 / (3.0 * r0_grid)
            terms = [(1.0 - w2 - w3, x, x0, t0), (w2, x2, x0_2, t1), (w3, x3, x0_3, t2)]
        if math.isinf(fused.ratio(dynamics, t0)):
            # alpha_0 = 0: only the w1 = 1 term survives; the step is Euler
            return self._euler(dynamics, t0, t1, x, x0), state
        out = [(a1 / a0, x)]
        for w, xk, x0k, tk in terms:
            ak, sk, _, _ = dynamics.scalars(tk)
            e = a1 * dr * w / sk
            out += [(e, xk), (-e * ak, x0k)]
        return lincomb(*out), state
