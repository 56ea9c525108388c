"""Time grids.  ``make_grid(name, schedule, steps, final="zero", **params) -> Grid``.

``steps = N`` gives N + 1 time points.  With ``final="zero"`` (default): N points from the start
down to t_min, then t = 0 (the step into 0 is the denoise step).  With ``final="t_min"``: N + 1
points from the start down to t_min, no denoise step (for convergence studies).

Grids are float64, strictly decreasing and validated once.  Ratio-based grids (karras, logsnr)
start at the schedule's finite ``sigma_max``; ``uniform`` starts at ``t_max`` itself (t = 1 for
rectified flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from samplerbench.models.errors import UserError
from samplerbench.models.schedules import Schedule

FINALS = ("zero", "t_min")
MAX_STEPS = 1_000_000      # per solve: a grid of 1e9 points would exhaust memory before it ran


@dataclass(frozen=True)
class Grid:
    t: torch.Tensor                  # float64, strictly decreasing, ends at 0 or t_min
    name: str
    final: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        t = self.t
        if t.dtype != torch.float64 or t.ndim != 1 or t.numel() < 2:
            raise ValueError("a grid is a 1-D float64 tensor with at least 2 points")
        if not torch.isfinite(t).all() or (t < 0).any():
            raise UserError(f"grid {self.name!r}", t.tolist(), hint="times must be finite and >= 0")
        if not (t[1:] < t[:-1]).all():
            raise UserError(f"grid {self.name!r}", t.tolist(), hint="times must strictly decrease")
        if self.final not in FINALS:
            raise UserError("final", self.final, FINALS)
        if self.final == "zero" and t[-1] != 0:
            raise ValueError("final='zero' grids end at t = 0")
        if self.final == "t_min" and t[-1] == 0:
            raise ValueError("final='t_min' grids end at t_min > 0")

    @property
    def steps(self) -> int:
        return self.t.numel() - 1

    @property
    def t_start(self) -> float:
        return float(self.t[0])

    @property
    def t_end(self) -> float:
        """Last positive time (t_min)."""
        return float(self.t[-2] if self.final == "zero" else self.t[-1])


_GRIDS: dict[str, tuple[Callable, dict, str]] = {}


def register_grid(name: str, defaults: dict, doc: str):
    def deco(fn):
        if name in _GRIDS:
            raise ValueError(f"grid {name!r} is already registered")
        _GRIDS[name] = (fn, defaults, doc)
        return fn
    return deco


def available_grids() -> list[str]:
    return sorted(_GRIDS)


def grid_doc(name: str) -> tuple[dict, str]:
    _, defaults, doc = _GRIDS[name]
    return dict(defaults), doc


def _start_ratio(schedule: Schedule) -> float:
    return float(schedule.sigma_max)


def _t_min(schedule: Schedule, params: dict) -> float:
    if "t_min" not in params:
        return float(schedule.t_min)
    v = params["t_min"]
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            or not 0 < v < float(schedule.t_max)):
        raise UserError("grid parameter 't_min'", v, hint=f"a number in (0, t_max = "
                        f"{float(schedule.t_max):g})")
    return float(v)


@register_grid("uniform", {}, "uniform in t from t_max to t_min")
def _uniform(schedule, n, t_min, **_):
    return torch.linspace(schedule.t_max, t_min, n, dtype=torch.float64)


@register_grid("karras", {"rho": 7.0}, "Karras et al. 2022: uniform in ratio^(1/rho), rho = 7")
def _karras(schedule, n, t_min, rho):
    _positive("rho", rho)
    smin = float(schedule.ratio(t_min))
    smax = _start_ratio(schedule)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    r = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return schedule.t_from_ratio(r)


@register_grid("logsnr", {}, "uniform in log-SNR (DPM-Solver's 'logSNR' grid)")
def _logsnr(schedule, n, t_min, **_):
    lam_lo = -2.0 * math.log(_start_ratio(schedule))
    lam_hi = float(schedule.log_snr(t_min))
    lam = torch.linspace(lam_lo, lam_hi, n, dtype=torch.float64)
    return schedule.t_from_log_snr(lam)


@register_grid("exponential", {}, "uniform in log(sigma/alpha) (k-diffusion get_sigmas_exponential; "
               "the same points as logsnr)")
def _exponential(schedule, n, t_min, **_):
    lo, hi = math.log(float(schedule.ratio(t_min))), math.log(_start_ratio(schedule))
    return schedule.t_from_ratio(torch.exp(torch.linspace(hi, lo, n, dtype=torch.float64)))


@register_grid("polyexponential", {"rho": 1.0},
               "k-diffusion get_sigmas_polyexponential: log ratio = log smin + ramp^rho (log smax - "
               "log smin), ramp from 1 to 0; rho = 1 is exponential")
def _polyexponential(schedule, n, t_min, rho):
    _positive("rho", rho)
    lo, hi = math.log(float(schedule.ratio(t_min))), math.log(_start_ratio(schedule))
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return schedule.t_from_ratio(torch.exp(lo + ramp * (hi - lo)))


@register_grid("quadratic", {}, "DDIM's quadratic spacing: t = t_min + (t_max - t_min) u^2, u uniform")
def _quadratic(schedule, n, t_min, **_):
    u = torch.linspace(1, 0, n, dtype=torch.float64)
    return t_min + (float(schedule.t_max) - t_min) * u**2


def _time_shift(u, shift):
    return shift * u / (1 + (shift - 1) * u)


@register_grid("shift", {"shift": 3.0},
               "SD3 / Flux time shift of a uniform grid: t = s u / (1 + (s - 1) u) on t / t_max, "
               "ends kept at t_max and t_min")
def _shift(schedule, n, t_min, shift):
    _positive("shift", shift)
    t_max = float(schedule.t_max)
    v = t_min / t_max                                   # shifted end -> unshifted u_min
    u_min = v / (shift - (shift - 1) * v)
    u = torch.linspace(1, u_min, n, dtype=torch.float64)
    return t_max * _time_shift(u, shift)


@register_grid("list", {"values": None, "space": "t"},
               "user-given decreasing values in t (space = 't') or in sigma/alpha (space = "
               "'ratio'); steps must match their number")
def _list(schedule, n, t_min, values, space):
    if space not in ("t", "ratio"):
        raise UserError("grid parameter 'space' of 'list'", space, ["t", "ratio"])
    try:
        v = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserError("grid parameter 'values' of 'list'", values,
                        hint="a list of numbers") from None
    if v.ndim != 1 or v.numel() != n:
        raise UserError("steps for the 'list' grid", n, hint=f"the grid has {v.numel() if v.ndim == 1 else '?'} values; "
                        f"the grid needs as many points as values: steps = number of values "
                        f"(final='zero') or one less (final='t_min')")
    t = schedule.t_from_ratio(v) if space == "ratio" else v
    if not (t[1:] < t[:-1]).all() or (t <= 0).any() or t[0] > schedule.t_max * (1 + 1e-12):
        raise UserError("grid parameter 'values' of 'list'", values,
                        hint=f"strictly decreasing, positive, at most t_max = {schedule.t_max:g}")
    return t


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise UserError(f"grid parameter {name!r}", v, hint="a positive number")
    return float(v)


def make_grid(name: str, schedule: Schedule, steps: int, final: str = "zero", **params) -> Grid:
    """Build and validate a grid.  Unknown names/params and steps < 1 raise ``UserError``."""
    if name not in _GRIDS:
        raise UserError("grid", name, available_grids())
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise UserError("steps", steps, hint=f"steps must be an integer in [1, {MAX_STEPS}]")
    if final not in FINALS:
        raise UserError("final", final, FINALS)
    fn, defaults, _ = _GRIDS[name]
    unknown = sorted(set(params) - set(defaults) - {"t_min"})
    if unknown:
        raise UserError(f"grid parameter of {name!r}", unknown[0], sorted(defaults) + ["t_min"])
    kw = {**defaults, **{k: v for k, v in params.items() if k != "t_min"}}
    t_min = _t_min(schedule, params)
    n = steps if final == "zero" else steps + 1
    if name == "list":
        if kw["values"] is None:
            raise UserError("grid parameter 'values' of 'list'", None, hint="give the time points")
        t = fn(schedule, n, t_min, **kw)
        return Grid(t=torch.cat([t, t.new_zeros(1)]) if final == "zero" else t, name=name,
                    final=final, params={k: v for k, v in kw.items()})
    if n == 1:
        t = torch.tensor([_first_point(name, schedule)], dtype=torch.float64)
    else:
        t = fn(schedule, n, t_min, **kw).to(torch.float64)
    # ratio -> t round trips miss the interval's ends by a few ulps: clamp, and snap the ends
    t_hi = float(schedule.t_max)
    t = t.clamp(min=t_min, max=t_hi)
    if abs(float(t[0]) - t_hi) <= 1e-12 * t_hi:
        t[0] = t_hi
    if t.numel() > 1 and abs(float(t[-1]) - t_min) <= 1e-12 * t_min:
        t[-1] = t_min
    if final == "zero":
        t = torch.cat([t, t.new_zeros(1)])
    recorded = {**kw, **({"t_min": t_min} if "t_min" in params else {})}
    return Grid(t=t, name=name, final=final, params=recorded)


def _first_point(name: str, schedule: Schedule) -> float:
    if name in ("uniform", "quadratic", "shift"):
        return float(schedule.t_max)
    return float(schedule.t_from_ratio(_start_ratio(schedule)))
