"""Equal budgets: the step count that spends at most a given number of model calls.

A spec's ``nfe = [6, 8, 10]`` axis gives each fixed-step solver the largest step count N whose
*counted* NFE on the cell's grid is not above the budget (Heun: N = 4 at 7 NFE for a budget of 8;
Euler: N = 8).  NFE is counted, never inferred from a formula: a dry run of the solver on a
stand-in denoiser with the model's schedule and data shape (it returns x0_hat = 0, so every
solver runs through its usual code path) counts the model calls of each candidate N, and a
binary search finds the largest N within the budget (NFE does not decrease with N).  Budgets
apply to fixed-step solvers; adaptive ones take ``tolerances``.
"""

from __future__ import annotations

import torch

from samplerbench.models.denoiser import Denoiser
from samplerbench.solvers import make_grid, make_noise
from samplerbench.solvers.grids import resolve_grid


class _ZeroDenoiser(Denoiser):
    """x0_hat = 0 with the model's schedule and data shape: NFE counting only."""

    def forward(self, x, t, **cond):
        return torch.zeros_like(x)


_CACHE: dict = {}


def counted_nfe(solver, den, grid_name: str, grid_params: dict, final: str, steps: int) -> int:
    """Model calls of one solve of ``solver`` with ``steps`` steps (a one-sample dry run)."""
    grid_name, grid_params = resolve_grid(grid_name, grid_params, den)      # "auto"
    key = (solver.name, repr(sorted(solver.params().items())), type(den.schedule).__name__,
           repr(den.schedule.__dict__), tuple(den.data_shape), grid_name,
           repr(sorted(grid_params.items())), final, steps)
    if key not in _CACHE:
        stand_in = _ZeroDenoiser(den.schedule, den.data_shape)
        grid = make_grid(grid_name, den.schedule, steps, final=final, **grid_params)
        x = torch.zeros(1, *den.data_shape, dtype=torch.float64)
        noise = (make_noise("fresh", [0], den.data_shape, grid, dtype=torch.float64)
                 if solver.stochastic else None)
        sol = solver.solve(solver.make_dynamics(stand_in), x, grid, noise)
        _CACHE[key] = int(sol.nfe)
    return _CACHE[key]


def steps_for_budget(solver, den, grid_name: str, grid_params: dict, final: str,
                     budget: int, most: int = 100_000) -> tuple[int, int] | None:
    """(N, counted NFE) for the largest N with counted NFE <= ``budget``; None when even one
    step costs more."""
    def nfe(n):
        return counted_nfe(solver, den, grid_name, grid_params, final, n)

    if nfe(1) > budget:
        return None
    lo, hi = 1, 2
    while hi <= most and nfe(hi) <= budget:       # every solver spends >= 1 call per step
        lo, hi = hi, hi * 2
    while hi - lo > 1:                            # nfe(lo) <= budget < nfe(hi)
        mid = (lo + hi) // 2
        if nfe(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo, nfe(lo)
