"""Diffusion-specific samplers (DDIM, ancestral, ...)."""

from solvers.diffusion import ddim, euler_ancestral  # noqa: F401  (registers solvers)
