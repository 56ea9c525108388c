"""Classical ODE solvers: fixed-step Runge-Kutta tableaus and adaptive torchdiffeq methods."""

from samplerbench.solvers.classical import adams_bashforth, adaptive, runge_kutta  # noqa: F401  (registers)
