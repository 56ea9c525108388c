"""The canonical model interface: ``D(x, t, **cond) -> x0_hat`` (EDM / k-diffusion convention)."""

from __future__ import annotations

from typing import Callable

import torch

from models.conversions import PREDICTIONS, expand_like, to_x0
from models.errors import UserError
from models.schedules import Schedule

Tensor = torch.Tensor


class Denoiser(torch.nn.Module):
    """Base class: maps noisy x [B, *data_shape] at per-sample times t [B] to the x0 estimate.

    Attributes: ``schedule``, ``data_shape``, ``t_min``/``t_max`` (the sampling interval; default
    the schedule's).  ``forward_passes_per_call`` is 2 for classifier-free guidance."""

    forward_passes_per_call: int = 1

    def __init__(self, schedule: Schedule, data_shape: tuple[int, ...]):
        super().__init__()
        self.schedule = schedule
        self.data_shape = tuple(int(s) for s in data_shape)

    @property
    def t_min(self) -> float:
        return self.schedule.t_min

    @property
    def t_max(self) -> float:
        return self.schedule.t_max

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PredictionDenoiser(Denoiser):
    """Adapter for a network ``net(x, t, **cond)`` that predicts eps / x0 / v / velocity / score
    under ``schedule``; the conversion to x0 is the pure function :func:`models.conversions.to_x0`."""

    def __init__(self, net: Callable, schedule: Schedule, prediction: str,
                 data_shape: tuple[int, ...]):
        super().__init__(schedule, data_shape)
        if prediction not in PREDICTIONS:
            raise UserError("prediction", prediction, PREDICTIONS)
        self.net = net
        self.prediction = prediction

    def forward(self, x, t, **cond):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        out = self.net(x, t, **cond)
        a, s, da, ds = (expand_like(c, x) for c in self.schedule.coefficients(t))
        return to_x0(self.prediction, out, x, a, s, da, ds)


class DenoiserWrapper(Denoiser):
    """Base of the wrappers around a denoiser (cast, timing, counting, guidance): same schedule,
    data shape, sampling interval and forward passes per call as ``inner``."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner.schedule, inner.data_shape)
        self.inner = inner
        self.forward_passes_per_call = getattr(inner, "forward_passes_per_call", 1)

    @property
    def t_min(self):
        return self.inner.t_min

    @property
    def t_max(self):
        return self.inner.t_max


class CastDenoiser(DenoiserWrapper):
    """Runs ``inner`` in ``dtype`` (e.g. bfloat16) while the solver state stays in its own dtype:
    x and t are cast on the way in, x0_hat back to the state's dtype on the way out."""

    def __init__(self, inner: Denoiser, dtype: torch.dtype):
        super().__init__(inner)
        self.dtype = dtype

    def forward(self, x, t, **cond):
        # time stays at least float32 (as under autocast): bf16 cannot tell t = 79 from 80
        tt = t.to(self.dtype) if self.dtype in (torch.float32, torch.float64) else t.float()
        return self.inner(x.to(self.dtype), tt, **cond).to(x.dtype)


class TimedDenoiser(DenoiserWrapper):
    """Accumulates wall time spent inside ``inner`` (CUDA-synchronised), so a harness can report
    model time and solver overhead separately.  Timing adds two clock reads per call."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self.seconds = 0.0

    def forward(self, x, t, **cond):
        import time

        cuda = x.is_cuda
        if cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        out = self.inner(x, t, **cond)
        if cuda:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - t0
        return out


class CountingDenoiser(DenoiserWrapper):
    """Wraps a denoiser and counts calls (NFE) and network forward passes.

    NFE is counted here and nowhere else (DESIGN: count, don't infer)."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self.nfe = 0
        self.forward_passes = 0

    def forward(self, x, t, **cond):
        self.nfe += 1
        self.forward_passes += getattr(self.inner, "forward_passes_per_call", 1)
        return self.inner(x, t, **cond)

    def reset(self) -> None:
        self.nfe = 0
        self.forward_passes = 0
