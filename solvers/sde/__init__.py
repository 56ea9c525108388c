"""Reverse-SDE solvers."""

from solvers.sde import euler_maruyama  # noqa: F401  (registers solvers)
