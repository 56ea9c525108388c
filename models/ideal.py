"""The ideal denoiser of an empirical distribution (Karras et al. 2022, App. B.3).

For p_data = (1/N) sum_i delta(y_i) and x_t = alpha x0 + sigma eps the posterior over training
points is a softmax, and the exact denoiser is its mean:

    D(x, t) = sum_i softmax_i(-||x - alpha y_i||^2 / (2 sigma^2)) y_i.

Its PF-ODE maps every noise vector to (a point converging to) one training image: a stiff problem
(the softmax sharpens as sigma -> 0) with a known answer.  The logits are formed as
(alpha x.y_i - alpha^2 ||y_i||^2 / 2) / sigma^2 (the ||x||^2 term cancels in the softmax) and always
in float64 -- at sigma = 0.002 they reach ~1e7 and float32 would scramble the softmax -- in chunks
of the batch so memory stays at ``chunk * N`` numbers.
"""

from __future__ import annotations

import math

import torch

from samplerbench.models.denoiser import Denoiser
from samplerbench.models.schedules import Schedule

Tensor = torch.Tensor


class EmpiricalDenoiser(Denoiser):
    """Exact posterior-mean denoiser of the empirical distribution of ``data`` [N, *data_shape]."""

    def __init__(self, data: Tensor, schedule: Schedule, chunk: int = 1024):
        data = torch.as_tensor(data, dtype=torch.float64)
        super().__init__(schedule, tuple(data.shape[1:]))
        self.data = data.reshape(data.shape[0], -1)
        self.sq_norms = (self.data**2).sum(1)
        self.chunk = int(chunk)
        self._on: dict = {}

    def _tables(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.data.to(device), self.sq_norms.to(device))
        return self._on[key]

    def forward(self, x, t, **cond):
        B = x.shape[0]
        y, y2 = self._tables(x.device)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(B)
        a = self.schedule.alpha(t).to(x.device)[:, None]
        s2 = (self.schedule.sigma(t) ** 2).to(x.device)[:, None]
        xf = x.reshape(B, -1).to(torch.float64)
        out = torch.empty_like(xf)
        for i in range(0, B, self.chunk):
            sl = slice(i, i + self.chunk)
            logits = (a[sl] * (xf[sl] @ y.T) - 0.5 * a[sl] ** 2 * y2[None]) / s2[sl]
            out[sl] = torch.softmax(logits, dim=1) @ y
        return out.reshape(x.shape).to(x.dtype)

    def nearest(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(index of the nearest training point, RMS distance to it) per sample."""
        y, _ = self._tables(x.device)
        d = torch.cdist(x.reshape(x.shape[0], -1).double(), y)
        dist, idx = d.min(dim=1)
        return idx, dist / math.sqrt(y.shape[1])
