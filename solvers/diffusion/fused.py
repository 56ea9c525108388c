"""Hot-path helpers of the fixed-step solvers: schedule scalars as cached Python floats, and linear
combinations of state-sized tensors in as few passes over memory as possible.

Every update of a fixed-step ODE solver here is linear in the tensors it has at hand (the state x,
the model outputs x0_hat, stored history).  Its coefficients depend on the grid only, so they are
computed in Python floats (float64) from schedule values that :meth:`_Dynamics.prime` evaluates
once per solve in one vectorised call; the tensors are then combined with one fused
multiply-add per term (``torch.mul`` for the first, ``Tensor.add_(t, alpha=c)`` for the rest).
The algorithms are unchanged: only the order of the floating-point operations differs.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def lincomb(*terms: tuple[float, Tensor]) -> Tensor:
    """sum_i c_i T_i for (c_i, T_i) pairs, in one pass per term (a new tensor; inputs untouched).

    A leading coefficient of exactly 1 costs no multiply: the first two terms are one
    ``torch.add``."""
    (c0, t0), rest = terms[0], terms[1:]
    if c0 == 1.0 and rest:
        (c1, t1), rest = rest[0], rest[1:]
        out = torch.add(t0, t1, alpha=c1)
    else:
        out = torch.mul(t0, c0)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def prime(dynamics, grid, extra=()) -> list[float]:
    """Evaluate the schedule at every grid time (and ``extra`` times) in one vectorised call, cached
    on ``dynamics`` for this solve; returns the grid times as floats."""
    ts = grid.t.tolist()
    dynamics.prime(list(ts) + list(extra))
    return ts


def ratio(dynamics, t: float) -> float:
    """sigma(t) / alpha(t) from the cached scalars; inf where alpha = 0."""
    a, s, _, _ = dynamics.scalars(t)
    return s / a if a != 0.0 else math.inf


def lam(dynamics, t: float) -> float:
    """lambda(t) = -log(sigma/alpha) from the cached scalars; -inf where alpha = 0, +inf where
    sigma = 0 (t = 0)."""
    r = ratio(dynamics, t)
    if r == 0.0:
        return math.inf
    return -math.inf if math.isinf(r) else -math.log(r)


def t_of_lams(schedule, lams) -> list[float]:
    """Times at which lambda(t) = each of ``lams`` (one vectorised call)."""
    if not lams:
        return []
    return schedule.t_from_log_snr(2.0 * torch.tensor(lams, dtype=torch.float64)).tolist()
