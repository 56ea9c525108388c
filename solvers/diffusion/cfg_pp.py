"""CFG++ samplers (Chung, Kim, Park, Nam & Ye 2024, CFG++: Manifold-constrained Classifier Free
Guidance for Diffusion Models, arXiv 2406.08070; ComfyUI ``sample_euler_cfg_pp``,
``sample_dpmpp_2m_cfg_pp``).

Standard CFG takes a DDIM step with the guided x0_hat and the *guided* noise estimate.  CFG++
keeps the guided x0_hat for the denoising part and re-noises with the *unconditional* one:

    x_1 = alpha_1 x0_hat + sigma_1 eps_uncond,   eps_uncond = (x - alpha_0 x0_uncond) / sigma_0,

so the step is (sigma_1/sigma_0) x + alpha_1 x0_hat - (alpha_0 sigma_1/sigma_0) x0_uncond.  The
solver gets both outputs from one guided evaluation through ``dynamics.denoise_pair`` (1 NFE,
2 forward passes: the two halves of classifier-free guidance, run even at w = 0).

Guidance scale.  The paper writes x0_hat^lambda = x0_uncond + lambda (x0_cond - x0_uncond) with
lambda in [0, 1]; ComfyUI passes its ``cfg`` as lambda.  Our ``guidance`` axis w gives
x0_hat = x0_cond + w (x0_cond - x0_uncond), the same expression with

    lambda = 1 + w        (w = lambda - 1: the paper's range [0, 1] is w in [-1, 0]).

w = 0 (lambda = 1: conditional x0_hat, unconditional re-noising) is *not* the unguided sampler;
w = -1 (lambda = 0) is the unconditional model's ``ddim`` / ``dpmpp_2m`` (to rounding: tested).
Without guidance (an unconditional model, or no ``guidance`` axis) x0_uncond is x0_hat and the
samplers are ``ddim`` / ``dpmpp_2m`` bit for bit (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.ddim import ddim_update
from samplerbench.solvers.diffusion.dpmpp import DPMSolverPP2M, data_coefs
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

_REFERENCE = ("Chung, Kim, Park, Nam & Ye 2024, CFG++: Manifold-constrained Classifier Free "
              "Guidance for Diffusion Models; ComfyUI {}")


@register_solver
@dataclass(frozen=True)
class EulerCFGPP(Solver):
    """CFG++ Euler (ComfyUI ``euler_cfg_pp``): DDIM with the guided x0_hat and the
    unconditional eps_hat (module docstring; guidance scale lambda = 1 + w).

    ODE, order 1, 1 NFE per step (2 forward passes under guidance).  Without guidance it is
    ``ddim`` (= k-diffusion's Euler in sigma/alpha) bit for bit; the step into t = 0 is the
    denoise step x <- x0_hat (guided), as ComfyUI's last step.  Finite from alpha = 0 (rectified
    flow at t = 1), where x0_uncond drops out."""

    name = "euler_cfg_pp"
    kind = "ode"
    order = 1.0
    stages = 1
    reference = _REFERENCE.format("sample_euler_cfg_pp")

    def init_state(self, dynamics, x, grid):
        prime(dynamics, grid)
        return None

    def step(self, dynamics, t0, t1, x, state, noise):
        x0, x0_u = dynamics.denoise_pair(t0, x)
        if x0_u is x0:
            return ddim_update(dynamics, t0, t1, x, x0), state
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        c = s1 / s0
        return lincomb((c, x), (a1, x0), (-a0 * c, x0_u)), state


@register_solver
@dataclass(frozen=True)
class DPMSolverPP2MCFGPP(DPMSolverPP2M):
    """CFG++ DPM-Solver++(2M) (ComfyUI ``dpmpp_2m_cfg_pp``): with r = h_last / h,

        x_1 = [CFG++ first-order step] + alpha_1 (1 - e^{-h}) / (2r) (D_0 - U_-1),

    D_0 the guided x0_hat, U_-1 the previous step's unconditional x0_hat (ComfyUI's
    difference: guided now minus unconditional before); the first step is the CFG++ first-order
    step (``euler_cfg_pp``'s).  Without guidance (U = D) this is ``dpmpp_2m`` bit for bit
    (tested), so ODE order 2, 1 NFE per step (2 forward passes under guidance).  In lambda =
    log(alpha/sigma) for every schedule (as ``dpmpp_2m``; ComfyUI uses -log sigma, which is lambda
    for its VE/VP views but not for flow models).  ``lower_order_final`` as ``dpmpp_2m``."""

    name = "dpmpp_2m_cfg_pp"
    reference = _REFERENCE.format("sample_dpmpp_2m_cfg_pp")

    def step(self, dynamics, t0, t1, x, state, noise):
        x0, x0_u = dynamics.denoise_pair(t0, x)
        if x0_u is x0:
            return self.update(dynamics, t0, t1, x, state, x0)
        l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        h = l1 - l0
        last = (self.lower_order_final and state["final"] == "t_min" and state["grid_steps"] < 15
                and t1 == state["t_last"])
        a0, s0, _, _ = dynamics.scalars(t0)
        a1, s1, _, _ = dynamics.scalars(t1)
        c = s1 / s0
        terms = [(c, x), (a1, x0), (-a0 * c, x0_u)]
        if state["hist"] and not last:
            l_prev, u_prev = state["hist"][0]
            # + alpha_1 (1 - e^{-h}) / (2 r) (D_0 - U_-1), r = h_last / h
            k = data_coefs(dynamics, t0, t1, h)[1] * (0.5 / ((l0 - l_prev) / h))
            terms += [(k, x0), (-k, u_prev)]
        return lincomb(*terms), self._push(state, l0, x0_u, 1)
