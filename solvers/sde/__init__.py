"""Reverse-SDE solvers."""

from solvers.sde import euler_maruyama, torchsde_methods  # noqa: F401  (registers solvers)
