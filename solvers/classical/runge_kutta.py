"""Fixed-step explicit Runge-Kutta solvers of the PF-ODE, defined by their Butcher tableau."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver
from samplerbench.solvers.tableaus import BOSH3, EULER, HEUN, MIDPOINT, RALSTON, RK4, ButcherTableau


@dataclass(frozen=True)
class RungeKutta(Solver):
    """Explicit RK on dx/dt = v(t, x) in the schedule's own time t; NFE per step = stages."""

    tableau: ClassVar[ButcherTableau]

    def init_state(self, dynamics, x, grid):
        # schedule scalars at every stage time of the solve, in one vectorised call
        ts = grid.t.tolist()
        times = list(ts)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            if t1 != 0.0:
                h = t1 - t0
                times.extend(t1 if c == 1.0 else t0 + c * h for c in self.tableau.c)
        dynamics.prime(times)
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        tab = self.tableau
        h = t1 - t0
        last = _last_use(tab)
        ks: list = []
        out = x
        for i, (c, row, b) in enumerate(zip(tab.c, tab.a, tab.b)):
            # x + sum_j (h a_j) k_j: one fused multiply-add pass per nonzero coefficient
            xi = x
            for a, k in zip(row, ks):
                if a != 0.0:
                    xi = torch.add(x, k, alpha=h * a) if xi is x else xi.add_(k, alpha=h * a)
            # the c = 1 stage is at t1 exactly: t0 + h rounds below t_min when t0 >> t1
            k = dynamics.velocity(t1 if c == 1.0 else t0 + c * h, xi)
            del xi
            # the result x + sum_i (h b_i) k_i is accumulated as the stages come (same order of
            # additions), and each k_i is dropped after its last use: fewer live state-sized
            # tensors per step
            if b != 0.0:
                out = torch.add(x, k, alpha=h * b) if out is x else out.add_(k, alpha=h * b)
            ks.append(k if last[i] > i else None)
            for j in range(i):
                if last[j] == i:
                    ks[j] = None
        return out, state


@functools.lru_cache(maxsize=None)
def _last_use(tab: ButcherTableau) -> tuple[int, ...]:
    """For each stage j, the last stage i > j whose input uses k_j (j itself if none)."""
    n = len(tab.c)
    return tuple(max([j] + [i for i in range(j + 1, n)
                            if j < len(tab.a[i]) and tab.a[i][j] != 0.0]) for j in range(n))


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
