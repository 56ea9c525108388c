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
    """err_rms: RMS over dimensions, mean over samples (err_rms_se: its standard error over
    samples); err_max: max |x - x_ref| entrywise."""
    rms = per_sample_rms(x, x_ref)
    return {
        "err_rms": float(rms.mean()),
        "err_rms_se": float(rms.std() / math.sqrt(rms.numel())) if rms.numel() > 1 else None,
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


def timed(fn, device: torch.device, warmup: int, repeats: int,
          single_over_s: float | None = None):
    """Run ``fn`` warmup + repeats times; return (last result, median wall seconds, all times).
    On CUDA the clock is read after synchronisation.

    With ``single_over_s``, the first run is timed too: when it took at least that long, it is
    the only run (its result and its time are returned: one-off costs are small beside a solve
    that long, and a quality run does not pay for its timing twice); otherwise it counts as the
    first warm-up run (or, with ``warmup = 0``, the first timed repeat)."""
    def clocked():
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        return out, time.perf_counter() - t0

    times, out = [], None
    if single_over_s is not None:
        out, first = clocked()
        if first >= single_over_s:
            return out, first, [first]
        if warmup > 0:
            warmup -= 1
        else:
            times.append(first)
            repeats -= 1
    for _ in range(warmup):
        fn()
    for _ in range(repeats):
        out, dt = clocked()
        times.append(dt)
    return out, statistics.median(times), times


# --------------------------------------------------------------------------------------------
# SDE samplers: weak error (distributional distances) and the strong-error reference
# --------------------------------------------------------------------------------------------

def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.clamp(min=0.0).sqrt()) @ v.T


def frechet_moments(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance squared between N(mu1, cov1) and N(mu2, cov2), float64:
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2) (symmetric PSD form)."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    c1, c2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    s = _psd_sqrt(c1)
    cross = torch.linalg.eigvalsh(s @ c2 @ s).clamp(min=0.0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * cross
    return float(fd.clamp(min=0.0))


def frechet_gaussian(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mean_x, cov_x), the Gaussian fit of the
    samples x [n, *S], and N(mean, cov) (known moments, e.g. ``GaussianMixture.mean()`` /
    ``covariance()``):  |mean_x - mean|^2 + tr(cov_x + cov - 2 (cov_x^1/2 cov cov_x^1/2)^1/2).

    The FID formula on known moments, in float64.  With n samples it has a positive bias of
    O(d / n) even for exact samples; compare against that floor (``frechet_gaussian`` of exact
    samples) rather than against 0."""
    x = x.detach().double().reshape(x.shape[0], -1).cpu()
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if x.shape[0] < 2 or mean.numel() != x.shape[1] or cov.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"need n >= 2 samples of dimension d = {mean.numel()} and a d x d cov, "
                         f"got x {tuple(x.shape)} and cov {tuple(cov.shape)}")
    return frechet_moments(x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1]), mean, cov)


def frechet_gaussian_op(x: torch.Tensor, mean: torch.Tensor, cov_times, cov_trace: float
                        ) -> float:
    """:func:`frechet_gaussian` with the known covariance given as an operator ``cov_times(v)``
    = cov @ v ([d, m] -> [d, m]) and its trace, for high dimension: no d x d matrix is formed.
    With X the n centred samples ([n, d]), cov_x = X^T X / (n - 1), and the nonzero eigenvalues
    of cov_x^1/2 cov cov_x^1/2 are those of the n x n matrix X cov X^T / (n - 1), so the cost
    is O(n^2 d) plus n products with cov.  The same number as ``frechet_gaussian`` (tested; more
    accurate for n < d, where the dense form takes roots of a rank-deficient cov_x)."""
    x = x.detach().double().reshape(x.shape[0], -1).cpu()
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    n = x.shape[0]
    if n < 2 or mean.numel() != x.shape[1]:
        raise ValueError(f"need n >= 2 samples of dimension d = {mean.numel()}, got x "
                         f"{tuple(x.shape)}")
    m = x.mean(0)
    xc = x - m
    g = xc @ cov_times(xc.T) / (n - 1)
    # its rank is at most r = min(n - 1, d): the other eigenvalues are zeros that rounding makes
    # +-1e-16, whose square roots (~1e-8 each) are left out
    r = min(n - 1, x.shape[1])
    lam = torch.linalg.eigvalsh(0.5 * (g + g.T))[-r:]
    cross = lam.clamp(min=0.0).sqrt().sum()
    fd = (m - mean).pow(2).sum() + xc.pow(2).sum() / (n - 1) + float(cov_trace) - 2.0 * cross
    return float(fd.clamp(min=0.0))


def swd(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the samples x [n, *S] and y [m, *S]:
    sqrt(mean over directions of W2^2 of the 1-D projections), with ``n_projections`` fixed
    directions (uniform on the sphere, drawn from ``seed``) so that values are comparable across
    runs.  1-D W2 between the empirical distributions via their quantile functions (exact for
    n == m; on the merged quantile levels otherwise).  float64."""
    x = x.detach().double().reshape(x.shape[0], -1).cpu()
    y = y.detach().double().reshape(y.shape[0], -1).cpu()
    if x.shape[1] != y.shape[1] or x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(f"samples must share their dimension, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(x.shape[1], int(n_projections), generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if px.shape[0] == py.shape[0]:
        w2 = (px - py).pow(2).mean(0)
    else:
        # both quantile functions are step functions: integrate over the merged breakpoints
        n, m = px.shape[0], py.shape[0]
        levels = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                         torch.arange(1, m + 1, dtype=torch.float64) / m]))
        widths = torch.diff(levels, prepend=levels.new_zeros(1))
        mid = levels - 0.5 * widths
        ix = torch.clamp((mid * n).long(), max=n - 1)
        iy = torch.clamp((mid * m).long(), max=m - 1)
        w2 = ((px[ix] - py[iy]).pow(2) * widths[:, None]).sum(0)
    return float(w2.mean().sqrt())


def strong_reference(solver, denoiser, x_init: torch.Tensor, seeds, grid, steps: int,
                     noise: str = "brownian", cond: dict | None = None):
    """The strong-error reference of a stochastic cell: ``solver`` (the same solver, or e.g.
    ``euler_maruyama`` with the matching eta) with ``steps`` steps of ``grid``'s family (same
    name, parameters and ``final``) from the same x_init, on the same Brownian path.

    The path depends only on the per-sample seeds and the grid's positive interval
    [t_end, t_start], which does not change with the step count, so every step count of a grid
    family sees the same path, and one reference serves all of them.  Returns the Solution;
    err_rms against it is the strong error (record the reference solver and ``steps``).
    The solver's strong order caps how fast its own reference converges: with the same
    first-order solver at 16x the largest step count, the reference error is ~1/16 of the
    smallest error measured."""
    from samplerbench.solvers import make_grid, make_noise

    if grid.name == "list":
        raise ValueError("a 'list' grid has no family to refine; give a grid by name")
    if noise != "brownian":
        raise ValueError("a strong-error reference needs the Brownian path (noise='brownian'); "
                         "fresh noise differs at every step count")
    fine = make_grid(grid.name, denoiser.schedule, int(steps), final=grid.final, **grid.params)
    if (fine.t_end, fine.t_start) != (grid.t_end, grid.t_start):
        raise ValueError(f"grid family {grid.name!r} changes its interval with the step count: "
                         f"[{grid.t_end}, {grid.t_start}] vs [{fine.t_end}, {fine.t_start}]")
    src = make_noise(noise, list(seeds), denoiser.data_shape, fine, dtype=x_init.dtype,
                     device=x_init.device)
    return solver.solve(solver.make_dynamics(denoiser, cond), x_init, fine, src)


# --------------------------------------------------------------------------------------------
# peak memory of a cell
# --------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory over a window: ``start()`` ... ``stop() -> (bytes, kind)``.

    CUDA: the caching allocator's peak (``max_memory_allocated``, reset at start), kind
    ``cuda_allocated``.  CPU on Linux: the process's peak resident set, reset at start by writing
    5 to /proc/self/clear_refs and read at stop from ``getrusage`` (which reports the reset
    high-water mark), kind ``cpu_rss`` -- the whole process (interpreter, torch, model weights,
    cached references) at its highest point in the window, not only the cell's own tensors.
    Elsewhere on CPU: ``ru_maxrss``, the process's lifetime peak, kind ``cpu_rss_lifetime``.

    Cost per cell: ~20 us.  The clear_refs file stays open (one per process: opening it costs
    ~150 us on a small VM, more than a cheap cell's whole harness) and reading
    /proc/self/status is avoided (~200 us)."""

    _clear_refs: tuple[int, int] | None = None     # (pid, fd), reopened in a forked child

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.kind = None

    @classmethod
    def _reset_rss_peak(cls) -> bool:
        import os

        pid = os.getpid()
        try:
            if cls._clear_refs is None or cls._clear_refs[0] != pid:
                cls._clear_refs = (pid, os.open("/proc/self/clear_refs", os.O_WRONLY))
            os.write(cls._clear_refs[1], b"5")
            return True
        except OSError:
            cls._clear_refs = None
            return False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_allocated"
            return
        self.kind = "cpu_rss" if self._reset_rss_peak() else "cpu_rss_lifetime"

    def stop(self) -> tuple[int | None, str | None]:
        if self.kind == "cuda_allocated":
            return int(torch.cuda.max_memory_allocated(self.device)), self.kind
        try:
            import resource
            import sys

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # kilobytes on Linux, bytes on macOS
            return (int(peak if sys.platform == "darwin" else peak * 1024),
                    self.kind or "cpu_rss_lifetime")
        except (ImportError, OSError):
            return None, None
