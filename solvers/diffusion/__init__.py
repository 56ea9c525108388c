"""Diffusion-specific samplers (DDIM, ancestral, ...)."""

from samplerbench.solvers.diffusion import ddim, euler_ancestral  # noqa: F401  (registers solvers)
from samplerbench.solvers.diffusion import dpm_2, dpm_solver, dpmpp, edm_heun, lms  # noqa: F401
from samplerbench.solvers.diffusion import deis, ipndm, unipc  # noqa: F401  (registers solvers)
from samplerbench.solvers.diffusion import ddpm, dpmpp_sde, edm_stochastic  # noqa: F401  (stochastic samplers)
from samplerbench.solvers.diffusion import dpm_adaptive, dpm_fast  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import pndm  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import heunpp2, res_multistep  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import er_sde  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import sa_solver  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import consistency  # noqa: F401  (issue 16: lcm, tcd)
from samplerbench.solvers.diffusion import restart  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import gradient_estimation  # noqa: F401  (issue 16)
from samplerbench.solvers.diffusion import cfg_pp, seeds  # noqa: F401  (issue 16: CFG++, SEEDS)
