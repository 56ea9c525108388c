"""Fixed-step explicit Runge-Kutta solvers of the PF-ODE, defined by their Butcher tableau."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from solvers.base import Solver
from solvers.registry import register_solver
from solvers.tableaus import BOSH3, EULER, HEUN, MIDPOINT, RALSTON, RK4, ButcherTableau


@dataclass(frozen=True)
class RungeKutta(Solver):
    """Explicit RK on dx/dt = v(t, x) in the schedule's own time t; NFE per step = stages."""

    tableau: ClassVar[ButcherTableau]

    def step(self, dynamics, t0, t1, x, state, noise):
        tab = self.tableau
        h = t1 - t0
        ks = []
        for c, row in zip(tab.c, tab.a):
            xi = x
            for a, k in zip(row, ks):
                if a != 0.0:
                    xi = xi + (h * a) * k
            # the c = 1 stage is at t1 exactly: t0 + h rounds below t_min when t0 >> t1
            ks.append(dynamics.velocity(t1 if c == 1.0 else t0 + c * h, xi))
        for b, k in zip(tab.b, ks):
            if b != 0.0:
                x = x + (h * b) * k
        return x, state


def _rk(tableau: ButcherTableau, reference: str, doc: str):
    cls = type(tableau.name.capitalize(), (RungeKutta,), {
        "name": tableau.name, "tableau": tableau, "order": float(tableau.order),
        "stages": tableau.stages, "reference": reference, "__doc__": doc,
        "__module__": __name__, "__qualname__": tableau.name.capitalize(),
    })
    return register_solver(dataclass(frozen=True)(cls))


Euler = _rk(EULER, "Euler (1768)", "Explicit Euler on the PF-ODE: order 1, 1 NFE per step.")
Heun = _rk(HEUN, "Heun (1900); Karras et al. 2022 Alg. 1",
           "Heun's method (explicit trapezoid): order 2, 2 NFE per step.  On an EDM-schedule model "
           "with a Karras grid it is EDM's deterministic sampler (Karras et al. 2022, Alg. 1).")
Midpoint = _rk(MIDPOINT, "Runge (1895)", "Explicit midpoint: order 2, 2 NFE per step.")
Ralston = _rk(RALSTON, "Ralston (1962)", "Ralston's minimum-error 2nd-order RK: 2 NFE per step.")
Bosh3 = _rk(BOSH3, "Bogacki & Shampine (1989)",
            "Bogacki-Shampine 3rd-order RK (fixed step, no error estimate): 3 NFE per step.")
Rk4 = _rk(RK4, "Kutta (1901)", "Classical 4th-order Runge-Kutta: 4 NFE per step.")
