"""Metrics on solutions: error against the reference, non-convergence, order fits, timing."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch


def per_sample_rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS over all non-batch dimensions of a - b, per sample (float64)."""
    d = (a.double() - b.double()).reshape(a.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


def error_metrics(x: torch.Tensor, x_ref: torch.Tensor) -> dict:
    """err_rms: RMS over dimensions, mean over samples; err_max: max |x - x_ref| entrywise."""
    return {
        "err_rms": float(per_sample_rms(x, x_ref).mean()),
        "err_max": float((x.double() - x_ref.double()).abs().max()),
    }


def nonconv(x_n: torch.Tensor, x_2n: torch.Tensor) -> float:
    """RMS distance between the results at N and 2N steps (same seed), mean over samples."""
    return float(per_sample_rms(x_n, x_2n).mean())


def fit_order(nfe, err, n_points: int = 3, floor: float = 1e-11) -> float | None:
    """Empirical order: -slope of log err vs log NFE over the asymptotic points.

    The asymptotic range, by rule: the ``n_points`` largest-NFE points whose error lies above
    ``floor`` (errors at the float/reference floor carry no order information).  None when fewer
    than 2 such points."""
    pts = sorted((float(n), float(e)) for n, e in zip(nfe, err)
                 if n and e is not None and math.isfinite(e) and e > floor)
    pts = pts[-n_points:]
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope)


def fit_order_ci(nfe, err, n_points: int = 3, floor: float = 1e-11, level: float = 0.95):
    """(order, low, high): the fitted order of :func:`fit_order` with a ``level`` confidence
    interval from the least-squares slope's standard error (Student t, n - 2 degrees of
    freedom).  The interval is (None, None) with only two points."""
    pts = sorted((float(n), float(e)) for n, e in zip(nfe, err)
                 if n and e is not None and math.isfinite(e) and e > floor)[-n_points:]
    p = fit_order([q[0] for q in pts], [q[1] for q in pts], n_points=n_points, floor=floor)
    if p is None or len(pts) < 3:
        return p, None, None
    from scipy import stats

    res = stats.linregress(np.log([q[0] for q in pts]), np.log([q[1] for q in pts]))
    half = float(stats.t.ppf(0.5 + level / 2, len(pts) - 2) * res.stderr)
    return p, p - half, p + half


def pareto_front(cost, quality) -> list[int]:
    """Indices of the points not dominated in (lower cost, lower error), sorted by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], quality[i]))
    front, best = [], math.inf
    for i in order:
        if quality[i] < best:
            front.append(i)
            best = quality[i]
    return front


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int):
    """Run ``fn`` warmup + repeats times; return (last result, median wall seconds, all times).
    On CUDA the clock is read after synchronisation."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times
