"""Solvers: the Solver base, registry + plugins, grids, noise sources, RK tableaus and the
classical / diffusion / SDE solver families."""

from samplerbench.solvers.base import Solution, Solver
from samplerbench.solvers.grids import Grid, available_grids, make_grid
from samplerbench.solvers.noise import NOISE_MODES, initial_noise, make_noise
from samplerbench.solvers.registry import (ENTRY_POINT_GROUP, available_solvers, get_solver, register_solver,
                              solver_class)
from samplerbench.solvers import classical, diffusion, sde  # noqa: E402,F401  (registers built-ins)

__all__ = [
    "Solution", "Solver", "Grid", "available_grids", "make_grid", "NOISE_MODES", "initial_noise",
    "make_noise", "ENTRY_POINT_GROUP", "available_solvers", "get_solver", "register_solver",
    "solver_class",
]
