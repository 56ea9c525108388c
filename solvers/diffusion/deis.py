"""DEIS (Zhang & Chen 2023): the exponential-integrator multistep solver of the PF-ODE in noise
prediction, with eps_hat extrapolated by a polynomial through the last outputs.

In the ratio rho = sigma/alpha the PF-ODE is d(x/alpha)/d rho = eps_hat exactly, so

    x_1 / alpha_1 = x_0 / alpha_0 + sum_j c_j eps_j,   c_j = int_{rho_0}^{rho_1} L_j(log rho) d rho,

with L_j the Lagrange basis in log rho through the nodes (diffusers' ``solver_type="logrho"``).
Written as x_1 = alpha_1 x0_hat_0 + sigma_1 eps_0 + alpha_1 sum_{j>=1} c_j (eps_j - eps_0)
(sum_j L_j = 1), which never divides by alpha_0 and starts from alpha = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.diffusion.lagrange import basis_integrals
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class DEIS(Solver):
    """DEIS multistep (AB-DEIS with the eps polynomial in log rho, as diffusers'
    ``DEISMultistepScheduler``), data-independent coefficients integrated exactly.

    ODE, 1 NFE per step, order ``solver_order`` (default 2, diffusers' default; the DEIS paper
    recommends 3 for unconditional sampling).  Warm-up: step i uses order min(p, i + 1).
    Step 1 is DDIM.

    ``lower_order_final`` (default True) is diffusers' rule: on grids of fewer than 15 steps the
    last step is first order and the one before at most second order; on ``final="zero"`` grids the
    last step is the denoise step.  Equals diffusers on the same grid (whose grid always ends at
    the first training noise level, i.e. ``final="t_min"`` here).

    The DEIS paper's tAB variant fits the polynomial in the model's own time t, which makes the
    method depend on how a model parameterises time; the log-rho polynomial does not.  Its rho-AB
    variant (polynomial in rho) is ``ipndm_v``.  History at rho = inf (alpha = 0, rectified flow
    at t = 1) is dropped: its Lagrange weight vanishes in the limit."""

    solver_order: int = 2
    lower_order_final: bool = True

    name = "deis"
    kind = "ode"
    order = 2.0
    stages = 1
    reference = ("Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator; "
                 "diffusers DEISMultistepScheduler")

    def __post_init__(self):
        if type(self.solver_order) is not int or self.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order!r}")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(
                f"lower_order_final must be true or false, got {self.lower_order_final!r}")
        object.__setattr__(self, "order", float(self.solver_order))

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        # hist: (log rho, sigma eps_hat) of earlier grid points, newest first; eps_hat is stored
        # times its sigma (x - alpha x0_hat: one pass over the state) and the 1/sigma goes into
        # the weights
        return {"i": 0, "n": grid.steps, "hist": ()}

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        u0, u1 = -fused.lam(dynamics, t0), -fused.lam(dynamics, t1)
        i, n = state["i"], state["n"]
        order = min(self.solver_order, i + 1)
        if self.lower_order_final and n < 15:
            if i == n - 1:
                order = 1
            elif i == n - 2:
                order = min(order, 2)
        e0 = torch.add(x, x0, alpha=-a0)            # sigma_0 eps_0
        # x_new = alpha_1 x0 + sigma_1 eps_0 + sum_j (sigma_1 w_j)(eps_j - eps_0)
        pts = [(u, e, s) for (u, e, s) in state["hist"][: order - 1] if math.isfinite(u)]
        terms = []
        c_eps = s1
        if pts and math.isfinite(u0):
            # in v = log rho - log rho_1: d rho = rho_1 e^v dv, and alpha_1 rho_1 = sigma_1
            nodes = [u0 - u1] + [u - u1 for u, _, _ in pts]
            w = basis_integrals(nodes, u0 - u1, 0.0, exp_weight=True)
            for wj, (_, ej, sj) in zip(w[1:], pts):
                c_eps -= s1 * wj
                terms.append(((s1 * wj) / sj, ej))
        x_new = lincomb((a1, x0), (c_eps / s0, e0), *terms)
        hist = ((u0, e0, s0),) + state["hist"][: max(self.solver_order - 2, 0)]
        return x_new, {**state, "i": i + 1, "hist": hist}
