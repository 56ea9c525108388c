"""Reverse-SDE solvers."""

from samplerbench.solvers.sde import euler_maruyama, torchsde_methods  # noqa: F401  (registers solvers)
