"""Small numerical helpers shared by the test files (import as ``from helpers import ...``)."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def fit_order(nfe: Sequence[float], err: Sequence[float]) -> float:
    """Empirical convergence order: minus the least-squares slope of log(err) against log(nfe).

    err ~ C * nfe^(-p)  =>  returns p.  Needs at least two points with positive, finite errors."""
    if len(nfe) != len(err) or len(nfe) < 2:
        raise ValueError(f"need >= 2 (nfe, err) pairs, got {len(nfe)} and {len(err)}")
    xs = [math.log(float(n)) for n in nfe]
    ys = []
    for e in err:
        e = float(e)
        if not (e > 0 and math.isfinite(e)):
            raise ValueError(f"errors must be positive and finite, got {e!r}")
        ys.append(math.log(e))
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("nfe values must not all be equal")
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return -sxy / sxx


def err_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The benchmark's err_rms: RMS over the data dimensions per sample, mean over samples."""
    d = (x.double() - ref.double()).reshape(x.shape[0], -1)
    return float(d.pow(2).mean(dim=1).sqrt().mean())


def autograd_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    """Elementwise d fn(t) / dt by autograd (fn maps a 1-D float64 tensor elementwise); a fn
    that does not depend on t (alpha = 1) has derivative 0."""
    tt = t.detach().clone().requires_grad_(True)
    out = fn(tt) + 0.0 * tt
    (g,) = torch.autograd.grad(out.sum(), tt)
    return g


class VEView:
    """k-diffusion's model(xbar, sigma) for our denoiser: D(alpha xbar, t(sigma)); counts calls."""

    def __init__(self, den):
        self.den, self.sched, self.calls = den, den.schedule, 0

    def __call__(self, xbar, sigma):
        self.calls += 1
        t = self.sched.t_from_ratio(sigma)
        a = self.sched.alpha(t).reshape((-1,) + (1,) * (xbar.ndim - 1))
        return self.den(a * xbar, t)


def load_kdiffusion_sampling(pkg: str):
    """k-diffusion's ``sampling.py`` loaded alone (k-diffusion is installed with --no-deps, so
    the package itself cannot be imported), under the private package name ``pkg`` with a stub
    ``utils``.  None when k-diffusion or one of sampling.py's own imports is missing."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    mod_pkg = types.ModuleType(pkg)
    mod_pkg.__path__ = []
    utils = types.ModuleType(f"{pkg}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules[pkg], sys.modules[f"{pkg}.utils"] = mod_pkg, utils
    mod_spec = importlib.util.spec_from_file_location(f"{pkg}.sampling", path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except ImportError:
        return None
    return mod


_MODEL_CACHE: dict = {}


def cached_model(name: str):
    """``load_model(name)``, loaded once per test process."""
    from samplerbench.models.zoo import load_model

    if name not in _MODEL_CACHE:
        _MODEL_CACHE[name] = load_model(name)
    return _MODEL_CACHE[name]


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


class InjectedDraws:
    """Injected standard-normal draws, one per call, shared by a solver and its peer."""

    def __init__(self, shape, n, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.z = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
        self.i = 0

    def __call__(self, *args, **kwargs):
        self.i += 1
        return self.z[self.i - 1]
