"""iPNDM (Zhang & Chen 2023; Zhou et al. 2024): Adams-Bashforth on the PF-ODE in the ratio
rho = sigma/alpha, where it reads d(x/alpha)/d rho = eps_hat exactly:

    x_{n+1}/alpha_{n+1} = x_n/alpha_n + (rho_{n+1} - rho_n) sum_j c_j eps_{n-j}.

Written as x_{n+1} = alpha_{n+1} x0_hat_n + sigma_{n+1} eps_n
                     + alpha_{n+1} (rho_{n+1} - rho_n) sum_{j>=1} c_j (eps_{n-j} - eps_n)
(sum_j c_j = 1), which never divides by alpha_n and starts from alpha = 0 (the first step is DDIM).
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

# Adams-Bashforth coefficients for equal steps, newest output first
AB_COEFFS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}

_REFERENCE = ("Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator "
              "(iPNDM); Zhou, Chen, Wang & Sun 2024, Fast ODE-based Sampling for Diffusion Models "
              "in Around 5 Steps (AMED; iPNDM_v)")


@dataclass(frozen=True)
class _IPNDM(Solver):
    solver_order: int = 4

    kind = "ode"
    stages = 1
    reference = _REFERENCE

    def __post_init__(self):
        if type(self.solver_order) is not int or self.solver_order not in AB_COEFFS:
            raise ValueError(f"solver_order must be 1, 2, 3 or 4, got {self.solver_order!r}")
        object.__setattr__(self, "order", self._declared_order())

    def _declared_order(self) -> float:
        return float(self.solver_order)

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        # hist: (rho, sigma eps_hat, sigma) of earlier grid points, newest first; eps_hat is
        # stored times its sigma (x - alpha x0_hat: one pass over the state) and the 1/sigma goes
        # into the weights
        return {"i": 0, "hist": ()}

    def _weights(self, r0: float, r1: float, hist, order: int):
        """(coefficients c_1.. for hist entries, the entries used)."""
        raise NotImplementedError

    def step(self, dynamics, t0, t1, x, state, noise):
        x0 = dynamics.denoise(t0, x)
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        r0, r1 = fused.ratio(dynamics, t0), fused.ratio(dynamics, t1)
        i = state["i"]
        order = min(self.solver_order, i + 1)
        e0 = torch.add(x, x0, alpha=-a0)            # sigma_0 eps_0
        # x_new = alpha_1 x0 + sigma_1 eps_0 + sum_j (scale c_j)(eps_j - eps_0)
        c_eps = s1
        terms = []
        if order > 1:
            c, pts = self._weights(r0, r1, state["hist"][: order - 1], order)
            scale = s1 - a1 * r0          # alpha_1 (rho_1 - rho_0)
            for cj, (_, ej, sj) in zip(c, pts):
                c_eps -= scale * cj
                terms.append(((scale * cj) / sj, ej))
        x_new = lincomb((a1, x0), (c_eps / s0, e0), *terms)
        hist = ((r0, e0, s0),) + state["hist"][: max(self.solver_order - 2, 0)]
        return x_new, {**state, "i": i + 1, "hist": hist}


@register_solver
@dataclass(frozen=True)
class IPNDM(_IPNDM):
    """iPNDM: Adams-Bashforth of order ``solver_order`` (1-4, default 4) with the fixed
    equal-step coefficients, lower orders for the first steps (the iPNDM of the DEIS repository,
    AMED's ``ipndm_sampler``, k-diffusion's ``sample_ipndm``).

    ODE, 1 NFE per step.  On grids uniform in rho the order is ``solver_order``; on any other
    grid the fixed coefficients mismatch the step-size ratios and the global order is at most 2
    (local error O(h (h_n - h_{n-1})) = O(h^3)), so the declared order is min(p, 2).  Use
    ``ipndm_v`` for the full order on karras / logsnr grids."""

    name = "ipndm"
    order = 2.0

    def _declared_order(self) -> float:
        return float(min(self.solver_order, 2))

    def _weights(self, r0, r1, hist, order):
        return AB_COEFFS[order][1:], hist


@register_solver
@dataclass(frozen=True)
class IPNDMV(_IPNDM):
    """iPNDM_v: variable-step Adams-Bashforth of order ``solver_order`` (1-4, default 4) in rho,
    the coefficients integrating the Lagrange polynomial through the actual nodes exactly.

    ODE, order ``solver_order``, 1 NFE per step; equals ``ipndm`` on grids uniform in rho, and is
    the rho-AB variant of DEIS.  Orders 1-2 coincide with AMED's ``ipndm_v_sampler`` (and
    k-diffusion's ``sample_ipndm_v``); their closed forms for orders 3 and 4 are not the
    variable-step coefficients (order 3 is exact only for linear eps on uneven steps; the order-4
    weights do not sum to 1 on uneven steps and are not AB4 on even ones), so here they are
    computed from the nodes instead.  History at rho = inf (alpha = 0) is dropped: its Lagrange
    weight vanishes in the limit."""

    name = "ipndm_v"
    order = 4.0

    def _weights(self, r0, r1, hist, order):
        pts = [p for p in hist if math.isfinite(p[0])]
        if not pts:
            return (), ()
        dr = r1 - r0
        nodes = [0.0] + [(p[0] - r0) / dr for p in pts]
        return basis_integrals(nodes, 0.0, 1.0)[1:], pts
