"""Adaptive solvers through torchdiffeq; the float64 tight-tolerance reference solver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from samplerbench.solvers.base import Solver, finish
from samplerbench.solvers.registry import register_solver


@dataclass(frozen=True)
class TorchdiffeqSolver(Solver):
    """Adaptive embedded RK through ``torchdiffeq.odeint`` from the grid's start to its last
    positive time, then the denoise step if the grid ends at 0.  The budget is ``rtol``/``atol``;
    NFE (rejected steps included) is counted by the wrapper."""

    rtol: float = 1e-5
    atol: float = 1e-5

    method: ClassVar[str] = ""
    stages = None
    adaptive = True

    def __post_init__(self):
        for k in ("rtol", "atol"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{k} must be a number in (0, 1), got {v!r}")

    def solve(self, dynamics, x, grid, noise=None):
        from torchdiffeq import odeint

        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        ts = torch.tensor([grid.t_start, grid.t_end], dtype=torch.float64, device=x.device)
        ts = ts.to(x.dtype)
        # step_t forces a step to land on t_end: without it torchdiffeq steps past the end and
        # interpolates back, evaluating the model at t < t_min (even t < 0)
        x = odeint(dynamics, x, ts, rtol=self.rtol, atol=self.atol, method=self.method,
                   options={"step_t": ts})[-1]
        if grid.final == "zero":
            x = dynamics.denoise(grid.t_end, x)
        # torchdiffeq does not report its accepted steps; NFE (counted) is the budget measure
        return finish(x, dynamics, nfe0, fp0, None)


@register_solver
@dataclass(frozen=True)
class Dopri5(TorchdiffeqSolver):
    """Dormand-Prince 5(4), adaptive (torchdiffeq ``dopri5``)."""

    name = "dopri5"
    method = "dopri5"
    order = 5.0
    reference = "Dormand & Prince 1980"


@register_solver
@dataclass(frozen=True)
class Dopri8(TorchdiffeqSolver):
    """Dormand-Prince 8(5,3), adaptive (torchdiffeq ``dopri8``); the reference solver's method."""

    name = "dopri8"
    method = "dopri8"
    order = 8.0
    reference = "Prince & Dormand 1981"


@register_solver
@dataclass(frozen=True)
class Bosh3Adaptive(TorchdiffeqSolver):
    """Bogacki-Shampine 3(2), adaptive (torchdiffeq ``bosh3``); ``bosh3`` is the fixed-step method."""

    name = "bosh3_adaptive"
    method = "bosh3"
    order = 3.0
    reference = "Bogacki & Shampine 1989"


@register_solver
@dataclass(frozen=True)
class AdaptiveHeun(TorchdiffeqSolver):
    """Heun-Euler 2(1), adaptive (torchdiffeq ``adaptive_heun``)."""

    name = "adaptive_heun"
    method = "adaptive_heun"
    order = 2.0
    reference = "Heun 1900 with an embedded Euler error estimate"


@dataclass(frozen=True)
class ScipySolver(Solver):
    """``scipy.integrate.solve_ivp`` on the whole batch as one flattened float64 system, from the
    grid's start to its last positive time, then the denoise step if the grid ends at 0.

    Budget: ``rtol``/``atol``.  Implicit methods (Radau, BDF) get the block-diagonal Jacobian
    sparsity of the batch, so a finite-difference Jacobian costs ``prod(data_shape)`` NFE, not
    ``batch * prod(data_shape)``.  LSODA cannot take a sparsity pattern: when it switches to its
    stiff mode its Jacobian costs ``batch * prod(data_shape)`` NFE.  Every call is counted."""

    rtol: float = 1e-5
    atol: float = 1e-5

    method: ClassVar[str] = ""
    stages = None
    adaptive = True

    __post_init__ = TorchdiffeqSolver.__post_init__

    def solve(self, dynamics, x, grid, noise=None):
        import numpy as np
        from scipy.integrate import solve_ivp

        nfe0, fp0 = dynamics.nfe, dynamics.forward_passes
        shape, dtype, device = x.shape, x.dtype, x.device

        def fun(t, y):
            xt = torch.from_numpy(np.ascontiguousarray(y)).reshape(shape).to(device, dtype)
            with torch.no_grad():
                v = dynamics.velocity(float(t), xt)
            return v.reshape(-1).to("cpu", torch.float64).numpy()

        kw = {}
        if self.method in ("Radau", "BDF"):
            from scipy.sparse import block_diag

            d = int(np.prod(shape[1:]))
            kw["jac_sparsity"] = block_diag([np.ones((d, d))] * shape[0], format="csr")
        y0 = x.detach().reshape(-1).to("cpu", torch.float64).numpy()
        res = solve_ivp(fun, (grid.t_start, grid.t_end), y0, method=self.method, rtol=self.rtol,
                        atol=self.atol, **kw)
        if not res.success:
            raise RuntimeError(f"scipy {self.method} failed: {res.message}")
        x = torch.from_numpy(res.y[:, -1].copy()).reshape(shape).to(device, dtype)
        n_steps = len(res.t) - 1
        if grid.final == "zero":
            x = dynamics.denoise(grid.t_end, x)
            n_steps += 1
        return finish(x, dynamics, nfe0, fp0, n_steps)


def _scipy(method: str, order: float, reference: str, doc: str):
    name = "scipy_" + method.lower()
    cls = type(name, (ScipySolver,), {"name": name, "method": method, "order": order,
                                      "reference": reference, "__doc__": doc,
                                      "__module__": __name__, "__qualname__": name})
    return register_solver(dataclass(frozen=True)(cls))


ScipyRK45 = _scipy("RK45", 5.0, "Dormand & Prince 1980 (scipy)", "scipy RK45: Dormand-Prince 5(4).")
ScipyDOP853 = _scipy("DOP853", 8.0, "Hairer, Norsett & Wanner 1993 (scipy)",
                     "scipy DOP853: Dormand-Prince 8(5,3).")
ScipyLSODA = _scipy("LSODA", 5.0, "Petzold 1983 (ODEPACK, scipy)",
                    "scipy LSODA: Adams / BDF with automatic stiffness switching (variable order "
                    "up to 12 / 5; declared 5 as a nominal figure).")
ScipyRadau = _scipy("Radau", 5.0, "Hairer & Wanner 1996 (scipy)",
                    "scipy Radau: implicit Radau IIA of order 5.")
ScipyBDF = _scipy("BDF", 5.0, "Shampine & Reichelt 1997 (scipy)",
                  "scipy BDF: variable-order (1-5) backward differentiation formulas.")


def reference_solve(dynamics, x: torch.Tensor, grid, rtol: float = 1e-10, atol: float = 1e-10):
    """The high-accuracy reference: dopri8 in float64 at tight tolerance over the same interval as
    ``grid`` and, with ``final="zero"``, the same denoise step.  Returns a ``Solution``."""
    return Dopri8(rtol=rtol, atol=atol).solve(dynamics, x.to(torch.float64), grid)
