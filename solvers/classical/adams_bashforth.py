"""Variable-step Adams-Bashforth on the PF-ODE in the schedule's own time t."""

from __future__ import annotations

from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.diffusion.lagrange import basis_integrals
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class AdamsBashforth(Solver):
    """Explicit Adams-Bashforth of order ``solver_order`` (2-4) on dx/dt = v(t, x):
    x_1 = x_0 + sum_j c_j v(t_j, x_j), c_j = integral over [t0, t1] of the Lagrange basis polynomial
    through the last ``solver_order`` grid times (exact coefficients for variable steps).

    ODE, 1 NFE per step, order ``solver_order``; the first steps use the available history
    (orders 1, 2, ...).  The classical counterpart of ``lms``, which does the same in sigma/alpha
    on the eps form."""

    solver_order: int = 3

    name = "adams_bashforth"
    kind = "ode"
    order = 3.0           # for the default solver_order; set per instance
    stages = 1
    reference = "Bashforth & Adams (1883); Hairer, Norsett & Wanner, Solving ODEs I, III.5"

    def __post_init__(self):
        if type(self.solver_order) is not int or self.solver_order not in (1, 2, 3, 4):
            raise ValueError(f"solver_order must be 1, 2, 3 or 4, got {self.solver_order!r}")
        object.__setattr__(self, "order", float(self.solver_order))

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return ()

    def step(self, dynamics, t0, t1, x, state, noise):
        hist = ((t0, dynamics.velocity(t0, x)),) + state[: self.solver_order - 1]
        h = t1 - t0
        # in s = (t - t0) / h the nodes are O(1) and the step is [0, 1]
        c = basis_integrals([(t - t0) / h for t, _ in hist], 0.0, 1.0)
        # x + sum_j (h c_j) v_j: one fused multiply-add pass per history entry
        return lincomb((1.0, x), *((h * cj, v) for cj, (_, v) in zip(c, hist))), hist
