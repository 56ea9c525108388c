"""A cheap exact denoiser for overhead measurements: data ~ N(0, s^2 I), so
D(x, t) = alpha s^2 / (alpha^2 s^2 + sigma^2) x -- one multiply-add per element."""

from __future__ import annotations

import torch

from samplerbench.models.conversions import expand_like
from samplerbench.models.denoiser import Denoiser


class GaussianDenoiser(Denoiser):
    def __init__(self, schedule, dim: int = 64, s: float = 0.5):
        super().__init__(schedule, (dim,))
        self.s2 = s * s

    def forward(self, x, t, **cond):
        a = self.schedule.alpha(t).to(x.dtype)
        sig = self.schedule.sigma(t).to(x.dtype)
        return expand_like(a * self.s2 / (a * a * self.s2 + sig * sig), x) * x


def euler_by_hand(den, x, ts):
    """The baseline: a hand-written loop with one model call per step and no harness around it."""
    sched = den.schedule
    for t0, t1 in zip(ts[:-1], ts[1:]):
        tt = torch.full((x.shape[0],), t0, dtype=torch.float64)
        x0 = den(x, tt)
        a, s, da, ds = (float(c) for c in sched.coefficients(torch.tensor(t0, dtype=torch.float64)))
        eps = (x - a * x0) / s
        x = x + (t1 - t0) * (da * x0 + ds * eps)
    return x


class MLPEps(torch.nn.Module):
    """A small eps-prediction network: [x, log(t)/4] -> 2 hidden SiLU layers of width ``hidden``
    -> eps_hat.  Untrained (PyTorch's default init from a fixed seed): its cost, not its output,
    is what the overhead benchmark needs -- about 0.2 MFLOP per sample at dim 64, width 256."""

    def __init__(self, dim: int = 64, hidden: int = 256, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.inp = torch.nn.Linear(dim + 1, hidden)
            self.mid = torch.nn.Linear(hidden, hidden)
            self.out = torch.nn.Linear(hidden, dim)

    def forward(self, x, t, **cond):
        h = torch.cat([x, (0.25 * torch.log(t)).to(x.dtype)[:, None]], dim=1)
        h = torch.nn.functional.silu(self.inp(h))
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


def mlp_denoiser(schedule, dim: int = 64, hidden: int = 256, seed: int = 0) -> Denoiser:
    """The MLP above behind the same adapter as a shipped eps-prediction checkpoint
    (``PredictionDenoiser`` over ``DtypeNet``: no autograd, eps -> x0 conversion per call)."""
    from samplerbench.models.denoiser import PredictionDenoiser
    from samplerbench.models.nets import DtypeNet

    return PredictionDenoiser(DtypeNet(MLPEps(dim, hidden, seed)), schedule, "eps", (dim,))
