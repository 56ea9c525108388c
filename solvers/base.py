"""The Solver interface and the shared fixed-step loop.

One signature for every solver (STYLE 4): ``solve(dynamics, x, grid, noise=None) -> Solution``.
Fixed-step solvers implement ``step`` and inherit the loop; adaptive ones override ``solve``.
The step into t = 0 (``final="zero"`` grids) is the denoise step x <- D(x, t_min) for every solver;
no solver evaluates the model at t = 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from samplerbench.models.dynamics import ProbabilityFlowODE, ReverseSDE
from samplerbench.models.errors import UserError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Solution:
    """Result of one solve.  ``nfe`` is read from the counting wrapper, never inferred."""

    x: Tensor
    nfe: int
    n_steps: int | None
    status: str = "ok"            # "ok" | "diverged"
    message: str = ""
    forward_passes: int = 0


@dataclass(frozen=True)
class Solver:
    """Base class: a frozen dataclass of hyperparameters plus class-level capabilities.

    Capabilities (data, not code): ``name``; ``kind`` "ode" (takes a ProbabilityFlowODE) or "sde"
    (takes a ReverseSDE); ``order`` (ODE convergence order; for SDE solvers ``strong_order`` /
    ``weak_order``); ``stages`` (NFE per step, None when adaptive or variable); ``adaptive``;
    ``stochastic`` (needs a noise source); ``reference`` (the paper implemented)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "ode"
    order: ClassVar[float | None] = None
    strong_order: ClassVar[float | None] = None
    weak_order: ClassVar[float | None] = None
    stages: ClassVar[int | None] = 1
    adaptive: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    infinite_ok: ClassVar[tuple[str, ...]] = ()   # float parameters that may be inf

    # ------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Hyperparameters as a flat dict (recorded in result rows)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def make_dynamics(self, denoiser, cond: dict | None = None):
        """The dynamics object this solver integrates: the PF-ODE, or the reverse SDE with this
        solver's ``eta`` (default 1) for ``kind == "sde"``."""
        if self.kind == "sde":
            return ReverseSDE(denoiser, eta=getattr(self, "eta", 1.0), cond=cond)
        return ProbabilityFlowODE(denoiser, cond=cond)

    def declared_nfe(self, grid) -> int | None:
        """NFE a fixed-step solver should spend on ``grid`` (used by conformance checks only)."""
        if self.stages is None:
            return None
        n = len(grid.t) - 1
        if grid.final == "zero":
            return (n - 1) * self.stages + 1
        return n * self.stages

    def check(self, denoiser, grid) -> str | None:
        """Why this solver cannot run this (model, grid) pair, or None.  The harness records a
        skip with this reason instead of running (capabilities are checked, not crashed on)."""
        return None

    # ------------------------------------------------------------------------------------------
    def init_state(self, dynamics, x: Tensor, grid) -> Any:
        return None

    def step(self, dynamics, t0: float, t1: float, x: Tensor, state: Any, noise) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def denoise_step(self, dynamics, t0: float, x: Tensor) -> Tensor:
        """The step into t = 0: x <- D(x, t0), 1 NFE (a solver that post-processes x0_hat, e.g.
        ``ddim`` with ``clip_x0``, applies the same to it)."""
        return dynamics.denoise(t0, x)

    def solve(self, dynamics, x: Tensor, grid, noise=None) -> Solution:
        if self.stochastic and noise is None:
            raise UserError("noise", None, ["fresh", "brownian"],
                            hint=f"solver {self.name!r} is stochastic and needs a noise source")
        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        ts = grid.t.tolist()
        state = self.init_state(dynamics, x, grid)
        n_steps = 0
        for i in range(len(ts) - 1):
            t0, t1 = ts[i], ts[i + 1]
            if t1 == 0.0:
                x = self.denoise_step(dynamics, t0, x)
            else:
                x, state = self.step(dynamics, t0, t1, x, state, noise)
            n_steps += 1
        return finish(x, dynamics, nfe0, fp0, n_steps)


def finish(x: Tensor, dynamics, nfe0: int, fp0: int, n_steps: int, message: str = "") -> Solution:
    """Package a result: NFE from the counter, status "diverged" on NaN/inf."""
    ok = bool(torch.isfinite(x).all())
    return Solution(x=x, nfe=dynamics.nfe - nfe0, n_steps=n_steps,
                    status="ok" if ok else "diverged",
                    message=message if ok else (message or "non-finite values in the solution"),
                    forward_passes=dynamics.forward_passes - fp0)


def positive_grid_end(grid) -> list[float]:
    """The grid's time points down to the last positive one (drops a final 0)."""
    ts = grid.t.tolist()
    return ts[:-1] if ts[-1] == 0.0 else ts
