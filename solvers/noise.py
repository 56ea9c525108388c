"""Noise sources for stochastic solvers, and the per-sample initial noise.

Randomness is explicit and per sample: sample i uses seed ``seed + i`` for its initial noise and its
own noise stream, so results do not depend on batch size or device count.

A noise source is called as ``noise(t0, t1) -> z`` and returns a standard-normal draw z [B, *S]
for the step from t0 to t1; the Brownian increment of that step is ``z * sqrt(|t1 - t0|)``.
  ``fresh``     a new Gaussian draw per call (k-diffusion's default for ancestral samplers)
  ``brownian``  increments of one Brownian path per sample, W(t0) - W(t1) normalised: the same path
                whatever the step count (torchsde ``BrownianInterval`` with ``entropy`` and
                ``halfway_tree=True``: the dyadic tree makes the path a function of the entropy
                alone, not of the query points; torchsde then takes a resolution ``tol`` instead
                of a ``dt`` hint).
"""

from __future__ import annotations

import math

import torch

from models.errors import UserError

NOISE_MODES = ("fresh", "brownian")
_STREAM_OFFSET = 1 << 40     # noise streams never share a seed with initial noise


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def sample_seeds(seed: int, n: int) -> list[int]:
    return [int(seed) + i for i in range(n)]


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype=torch.float64,
                  device="cpu") -> torch.Tensor:
    """Standard-normal z [n, *shape], row i drawn from its own generator seeded ``seeds[i]``."""
    z = torch.stack([torch.randn(shape, generator=_generator(s), dtype=torch.float64)
                     for s in seeds])
    return z.to(dtype=dtype, device=device)


class FreshNoise:
    """A new per-sample Gaussian draw for every step."""

    mode = "fresh"

    def __init__(self, seeds, shape, dtype=torch.float64, device="cpu"):
        self.gens = [_generator(s + _STREAM_OFFSET) for s in seeds]
        self.shape, self.dtype, self.device = tuple(shape), dtype, device

    def __call__(self, t0: float, t1: float) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64)
                         for g in self.gens])
        return z.to(dtype=self.dtype, device=self.device)


class BrownianNoise:
    """One Brownian path per sample on [t_lo, t_hi], queried by interval."""

    mode = "brownian"

    def __init__(self, seeds, shape, t_lo: float, t_hi: float, tol: float | None = None,
                 dtype=torch.float64, device="cpu"):
        import torchsde

        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.t_lo, self.t_hi = float(t_lo), float(t_hi)
        self.paths = [
            torchsde.BrownianInterval(t0=self.t_lo, t1=self.t_hi, size=(1,) + self.shape,
                                      dtype=torch.float64, entropy=int(s) + _STREAM_OFFSET,
                                      tol=float(tol or (self.t_hi - self.t_lo) * 2.0**-24),
                                      halfway_tree=True)
            for s in seeds
        ]

    def __call__(self, t0: float, t1: float) -> torch.Tensor:
        lo, hi = sorted((float(t0), float(t1)))
        lo, hi = max(lo, self.t_lo), min(hi, self.t_hi)
        dw = torch.cat([p(lo, hi) for p in self.paths])
        return (dw / math.sqrt(hi - lo)).to(dtype=self.dtype, device=self.device)


def make_noise(mode: str, seeds, shape, grid, dtype=torch.float64, device="cpu"):
    """Build the noise source ``mode`` for a batch with per-sample ``seeds`` over ``grid``."""
    if mode == "fresh":
        return FreshNoise(seeds, shape, dtype, device)
    if mode == "brownian":
        # the path lives on the grid's positive interval, which does not depend on the step count
        return BrownianNoise(seeds, shape, grid.t_end, grid.t_start, None, dtype, device)
    raise UserError("noise", mode, NOISE_MODES)
