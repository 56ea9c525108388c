"""Restart sampling (Xu, Deng, Ziming, Tian & Jaakkola 2023, Restart Sampling for Improving
Generative Processes, arXiv 2306.14878; the ComfyUI / A1111 ``restart`` sampler).

The PF-ODE is solved with EDM Heun steps (``edm_heun``) along the grid.  On arriving at the grid
point nearest to sigmabar_lo = ``restart_sigma_min`` (sigmabar = sigma/alpha), the sample is
pushed forward to the grid point nearest to sigmabar_hi = ``restart_sigma_max`` by the exact
forward kernel, in xbar = x/alpha:

    xbar_hi = xbar_lo + s_noise sqrt(sigmabar_hi^2 - sigmabar_lo^2) z,

and the ODE is solved back down to sigmabar_lo with ``restart_steps`` - 1 Heun steps on a Karras
(rho = 7) sub-grid between the two levels; this is repeated ``restart_times`` times, then the main
grid continues.  With an exact solver the forward kernel maps p(sigmabar_lo) to p(sigmabar_hi)
and the ODE maps it back, so a restart leaves the marginal unchanged while its noise contracts
the error accumulated before (the paper's argument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from samplerbench.models.errors import UserError
from samplerbench.solvers.base import Solver, finish
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.edm_heun import EDMHeun
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

AUTO = -1


def karras_ratios(n: int, lo: float, hi: float, rho: float = 7.0) -> list[float]:
    """n values from hi down to lo, uniform in ratio^(1/rho) (k-diffusion's get_sigmas_karras
    without its appended 0)."""
    a, b = hi ** (1.0 / rho), lo ** (1.0 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]


@register_solver
@dataclass(frozen=True)
class Restart(Solver):
    """Restart sampling: ``edm_heun`` on the grid plus restart intervals (module docstring).

    Default configuration (ComfyUI's automatic rule, by the number of grid points n = steps + 1):
    one interval from sigmabar = 0.1 to 2 (the grid points nearest to them), restarted
    2 times with 10-point sub-grids (9 Heun steps) when n >= 20, once with 6 points when n >= 10,
    not at all below 10.  ``restart_times`` / ``restart_steps`` = -1 mean that rule; 0 restart
    times is exactly ``edm_heun`` (tested).  The interval is skipped when the point nearest to
    ``restart_sigma_max`` is not above the one nearest to ``restart_sigma_min``.

    Stochastic (one draw per restart; ``fresh`` draws anew, ``brownian`` uses the normalised path
    increments over ``restart_times`` equal geometric parts of the interval's time span, which
    are disjoint and so independent), NFE: 2 per Heun step (1 on the denoise step), plus
    2 (restart_steps - 1) per restart.  ``stages`` = 2 counts the main steps; where the restarts
    go depends on the schedule (sigma/alpha), which a grid alone does not carry, so
    ``declared_nfe`` is None unless ``restart_times`` = 0 (the count is read from the counter
    and tested against edm_heun's plus the restarts'); the message says how many ran.  No convergence order: a restart
    moves the sample off the ODE path it started on; what it preserves is the distribution
    (tested on gmm2d against the exact mixture moments, with s_noise = 0 as a failing control).
    ``s_noise`` scales the re-noising (ComfyUI's)."""

    restart_sigma_min: float = 0.1
    restart_sigma_max: float = 2.0
    restart_steps: int = AUTO
    restart_times: int = AUTO
    s_noise: float = 1.0

    name = "restart"
    kind = "sde"
    stages = 2                  # main steps; the restarts' calls come on top (declared_nfe)
    stochastic = True
    reference = ("Xu, Deng, Ziming, Tian & Jaakkola 2023, Restart Sampling for Improving "
                 "Generative Processes; ComfyUI sample_restart")

    def __post_init__(self):
        lo, hi = self.restart_sigma_min, self.restart_sigma_max
        if not (0 < lo < hi < math.inf):
            raise ValueError(f"need 0 < restart_sigma_min < restart_sigma_max (finite), got "
                             f"{lo!r}, {hi!r}")
        if type(self.restart_steps) is not int or not (self.restart_steps == AUTO
                                                        or self.restart_steps >= 2):
            raise ValueError(f"restart_steps must be -1 (auto) or >= 2, got {self.restart_steps!r}")
        if type(self.restart_times) is not int or self.restart_times < AUTO:
            raise ValueError(f"restart_times must be -1 (auto) or >= 0, got {self.restart_times!r}")
        if not (0 <= self.s_noise < math.inf):
            raise ValueError(f"s_noise must be a finite number >= 0, got {self.s_noise!r}")

    def declared_nfe(self, grid) -> int | None:
        return super().declared_nfe(grid) if self.restart_times == 0 else None

    def _config(self, n_points: int) -> tuple[int, int]:
        steps, times = (10, 2) if n_points >= 20 else (6, 1) if n_points >= 10 else (6, 0)
        return (steps if self.restart_steps == AUTO else self.restart_steps,
                times if self.restart_times == AUTO else self.restart_times)

    def plan(self, schedule, grid) -> tuple[int, int, list[float], int] | None:
        """(index of the low point, of the high point, the sub-grid times from high to low,
        repetitions), or None when no restart runs on this grid."""
        steps, times = self._config(len(grid.t))
        ratios = schedule.ratio(grid.t).tolist()
        if grid.final == "zero":
            ratios[-1] = 0.0
        nearest = [min(range(len(ratios)), key=lambda j: abs(ratios[j] - s))
                   for s in (self.restart_sigma_min, self.restart_sigma_max)]
        lo, hi = nearest
        if times == 0 or not hi < lo or ratios[lo] <= 0.0 or not math.isfinite(ratios[hi]):
            return None
        sub = karras_ratios(steps, ratios[lo], ratios[hi])
        ts = schedule.t_from_ratio(torch.tensor(sub[1:-1], dtype=torch.float64)).tolist()
        t = grid.t.tolist()
        return lo, hi, [t[hi]] + ts + [t[lo]], times

    def solve(self, dynamics, x, grid, noise=None):
        if noise is None:
            raise UserError("noise", None, ["fresh", "brownian"],
                            hint=f"solver {self.name!r} is stochastic and needs a noise source")
        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        ts = prime(dynamics, grid)
        plan = self.plan(dynamics.schedule, grid)
        if plan is not None:
            dynamics.prime(plan[2])
        heun = EDMHeun()
        n_steps, restarts = 0, 0
        for i in range(len(ts) - 1):
            t0, t1 = ts[i], ts[i + 1]
            if t1 == 0.0:
                x = dynamics.denoise(t0, x)
            else:
                x, _ = heun.step(dynamics, t0, t1, x, None, None)
            n_steps += 1
            if plan is not None and i + 1 == plan[0]:
                x = self._restart(dynamics, x, plan, noise)
                restarts = plan[3]
        message = ""
        if plan is not None:
            message = (f"restart: {restarts} x {len(plan[2]) - 1} Heun steps from sigma/alpha "
                       f"{fused.ratio(dynamics, ts[plan[0]]):.3g} to "
                       f"{fused.ratio(dynamics, ts[plan[1]]):.3g}")
        return finish(x, dynamics, nfe0, fp0, n_steps, message)

    def _draws(self, noise, t_lo, t_hi, times):
        if getattr(noise, "mode", None) == "brownian":
            q = (t_hi / t_lo) ** (1.0 / times)
            edges = [t_lo * q ** k for k in range(times)] + [t_hi]
            return [noise(edges[k], edges[k + 1]) for k in range(times)]
        return [noise(t_lo, t_hi) for _ in range(times)]

    def _restart(self, dynamics, x, plan, noise):
        lo, hi, sub, times = plan
        t_lo, t_hi = sub[-1], sub[0]
        a_lo, a_hi = dynamics.scalars(t_lo)[0], dynamics.scalars(t_hi)[0]
        r_lo, r_hi = fused.ratio(dynamics, t_lo), fused.ratio(dynamics, t_hi)
        scale = a_hi * math.sqrt(r_hi * r_hi - r_lo * r_lo) * float(self.s_noise)
        heun = EDMHeun()
        for z in self._draws(noise, t_lo, t_hi, times):
            x = lincomb((a_hi / a_lo, x), (scale, z))
            for s0, s1 in zip(sub[:-1], sub[1:]):
                x, _ = heun.step(dynamics, s0, s1, x, None, None)
        return x
