"""The canonical model interface: ``D(x, t, **cond) -> x0_hat`` (EDM / k-diffusion convention)."""

from __future__ import annotations

from time import perf_counter as _perf_counter
from typing import Callable

import torch

from samplerbench.models.conversions import PREDICTIONS, expand_like, to_x0
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import Schedule

Tensor = torch.Tensor

UNCOND_KEY = "cfg_uncond"   # cond key of a guided call that also returns the unconditional half


class Denoiser(torch.nn.Module):
    """Base class: maps noisy x [B, *data_shape] at per-sample times t [B] to the x0 estimate.

    Attributes: ``schedule``, ``data_shape``, ``t_min``/``t_max`` (the sampling interval; default
    the schedule's).  ``forward_passes_per_call`` is 2 for classifier-free guidance.

    Latent models: ``decoder`` (None by default) maps the state -- the latent the ODE is solved
    in, of shape ``data_shape`` -- to data, ``decoder(z[B, *data_shape]) -> images[B,
    *decoder.data_shape]`` (e.g. :class:`samplerbench.models.decoders.VAEDecoder`).  Solvers and
    the error, order and non-convergence metrics never call it; quality metrics, ``sample``'s
    ``images`` and previews use :meth:`decode` once per sample after the solve."""

    forward_passes_per_call: int = 1

    def __init__(self, schedule: Schedule, data_shape: tuple[int, ...]):
        super().__init__()
        self.schedule = schedule
        self.data_shape = tuple(int(s) for s in data_shape)
        # no class attribute: an nn.Module decoder assigned later lives in _modules, where a
        # class-level default would shadow it
        self.decoder = None

    def decode(self, z: Tensor) -> Tensor:
        """The data of the states ``z`` [B, *data_shape]: ``decoder(z)``, or ``z`` itself for a
        model without a decoder."""
        dec = getattr(self, "decoder", None)
        return z if dec is None else dec(z)

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

    # our wrappers register no hooks, so a wrapper calls a wrapper's forward directly (nn.Module's
    # __call__ costs a few microseconds per model call); a model itself is always called normally
    _hookless = True

    def __init__(self, inner: Denoiser):
        super().__init__(inner.schedule, inner.data_shape)
        self.inner = inner
        self.decoder = getattr(inner, "decoder", None)
        self.forward_passes_per_call = getattr(inner, "forward_passes_per_call", 1)
        # a plain attribute (not a registered submodule: ``inner`` already is one)
        object.__setattr__(self, "_call_inner",
                           inner.forward if getattr(type(inner), "_hookless", False) else inner)

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
        return self._call_inner(x.to(self.dtype), tt, **cond).to(x.dtype)


class NFEBudgetExceeded(RuntimeError):
    """A solve made more model calls than its budget (the spec's ``max_nfe``); ``t`` is the time
    of the call that went over (how far the solve had got)."""

    def __init__(self, message: str, t: float | None = None):
        super().__init__(message)
        self.t = t


class TimedDenoiser(DenoiserWrapper):
    """Accumulates the time spent inside ``inner``, so a harness can report model time and solver
    overhead separately.

    CPU: two clock reads per call.  CUDA: a pair of CUDA events recorded around each call, with
    no synchronisation in the loop (synchronising every call would stall the launch queue and
    inflate the very wall time being measured); ``seconds`` synchronises once and sums the event
    intervals.  Set ``seconds = 0.0`` to start a new measurement."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self._cpu_s = 0.0
        self._events: list = []
        self.calls = 0
        self.max_calls = 1 << 62          # see ``budget``

    def budget(self, max_calls: int | None) -> None:
        """Count calls from zero; the call after the ``max_calls``-th raises
        :class:`NFEBudgetExceeded` (None: no limit)."""
        self.calls = 0
        self.max_calls = (1 << 62) if max_calls is None else int(max_calls)

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._cpu_s += sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events.clear()
        return self._cpu_s

    @seconds.setter
    def seconds(self, value: float) -> None:
        self._events.clear()
        self._cpu_s = float(value)

    def forward(self, x, t, **cond):
        d = self.__dict__
        d["calls"] += 1
        if d["calls"] > d["max_calls"]:
            tt = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) and t.numel() else None
            raise NFEBudgetExceeded(f"more than {d['max_calls']} model calls", tt)
        if x.is_cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            out = self._call_inner(x, t, **cond)
            end.record()
            self._events.append((start, end))
            return out
        t0 = _perf_counter()
        out = self._call_inner(x, t, **cond)
        # the instance dict directly: nn.Module.__setattr__ costs ~3 us a call in the hot loop
        self.__dict__["_cpu_s"] += _perf_counter() - t0
        return out


class CompiledDenoiser(DenoiserWrapper):
    """``inner`` under ``torch.compile`` (``backend``: inductor, aot_eager, eager, cudagraphs).

    The first calls at a new input shape compile (the harness's warm-up repeats absorb them);
    ``dynamic=False``: one specialised graph per batch size, as a benchmark wants."""

    def __init__(self, inner: Denoiser, backend: str = "inductor"):
        super().__init__(inner)
        self.backend = backend
        self._fn = torch.compile(inner.forward, backend=backend, dynamic=False)

    def forward(self, x, t, **cond):
        return self._fn(x, t, **cond)


class CountingDenoiser(DenoiserWrapper):
    """Wraps a denoiser and counts calls (NFE) and network forward passes.

    NFE is counted here and nowhere else (DESIGN: count, don't infer)."""

    def __init__(self, inner: Denoiser):
        super().__init__(inner)
        self.nfe = 0
        self.forward_passes = 0

    def forward(self, x, t, **cond):
        # the instance dict directly: nn.Module.__setattr__ costs ~3 us a call in the hot loop
        d = self.__dict__
        d["nfe"] += 1
        # a guided call that also returns the unconditional half (CFG++) always runs both
        d["forward_passes"] += 2 if cond.get(UNCOND_KEY) else d["forward_passes_per_call"]
        return d["_call_inner"](x, t, **cond)

    def reset(self) -> None:
        self.nfe = 0
        self.forward_passes = 0
