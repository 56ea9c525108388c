"""Adaptive solvers through torchdiffeq; the float64 tight-tolerance reference solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from solvers.base import Solver, finish
from solvers.registry import register_solver


@dataclass(frozen=True)
class TorchdiffeqSolver(Solver):
    """Adaptive embedded RK through ``torchdiffeq.odeint`` from the grid's start to its last
    positive time, then the denoise step if the grid ends at 0.  The budget is ``rtol``/``atol``;
    NFE (rejected steps included) is counted by the wrapper."""

    rtol: float = 1e-5
    atol: float = 1e-5

    method: ClassVar[str] = ""
    stages = None
    adaptive = True

    def __post_init__(self):
        for k in ("rtol", "atol"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{k} must be a number in (0, 1), got {v!r}")

    def solve(self, dynamics, x, grid, noise=None):
        from torchdiffeq import odeint

        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        ts = torch.tensor([grid.t_start, grid.t_end], dtype=torch.float64, device=x.device)
        ts = ts.to(x.dtype)
        # step_t forces a step to land on t_end: without it torchdiffeq steps past the end and
        # interpolates back, evaluating the model at t < t_min (even t < 0)
        x = odeint(dynamics, x, ts, rtol=self.rtol, atol=self.atol, method=self.method,
                   options={"step_t": ts})[-1]
        n_steps = 1
        if grid.final == "zero":
            x = dynamics.denoise(grid.t_end, x)
            n_steps += 1
        return finish(x, dynamics, nfe0, fp0, n_steps)


@register_solver
@dataclass(frozen=True)
class Dopri5(TorchdiffeqSolver):
    """Dormand-Prince 5(4), adaptive (torchdiffeq ``dopri5``)."""

    name = "dopri5"
    method = "dopri5"
    order = 5.0
    reference = "Dormand & Prince 1980"


@register_solver
@dataclass(frozen=True)
class Dopri8(TorchdiffeqSolver):
    """Dormand-Prince 8(5,3), adaptive (torchdiffeq ``dopri8``); the reference solver's method."""

    name = "dopri8"
    method = "dopri8"
    order = 8.0
    reference = "Prince & Dormand 1981"


def reference_solve(dynamics, x: torch.Tensor, grid, rtol: float = 1e-10, atol: float = 1e-10):
    """The high-accuracy reference: dopri8 in float64 at tight tolerance over the same interval as
    ``grid`` and, with ``final="zero"``, the same denoise step.  Returns a ``Solution``."""
    return Dopri8(rtol=rtol, atol=atol).solve(dynamics, x.to(torch.float64), grid)
