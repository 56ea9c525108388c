"""Euler-Maruyama on the reverse-SDE family."""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver


@register_solver
@dataclass(frozen=True)
class EulerMaruyama(Solver):
    """Euler-Maruyama on dx = [v - 1/2 g^2 score] dt + g dW (backwards in t), g^2 = eta^2 2 sigma^2
    d/dt log(sigma/alpha).  Ito; 1 NFE per step; strong order 1 for this additive-noise SDE (0.5 in
    general), weak order 1.  ``eta = 0`` is Euler on the PF-ODE."""

    eta: float = 1.0

    name = "euler_maruyama"
    kind = "sde"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    stochastic = True
    reference = "Maruyama 1955; Song et al. 2021 (reverse-time SDE)"

    def __post_init__(self):
        if not (self.eta >= 0):
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    def check(self, denoiser, grid):
        if self.eta > 0 and float(denoiser.schedule.alpha(grid.t_start)) == 0.0:
            return ("the reverse-SDE diffusion g(t) is infinite where alpha = 0 (t = "
                    f"{grid.t_start:g}); start from a finite sigma_max (e.g. grid 'karras')")
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        h = t1 - t0
        x_new = x + h * dynamics.drift(t0, x)
        if self.eta > 0.0:
            x_new = x_new + dynamics.diffusion(t0, x) * math.sqrt(abs(h)) * noise(t0, t1)
        return x_new, state
