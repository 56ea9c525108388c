"""Time grids.  ``make_grid(name, schedule, steps, final="zero", **params) -> Grid``.

``steps = N`` gives N + 1 time points.  With ``final="zero"`` (default): N points from the start
down to t_min, then t = 0 (the step into 0 is the denoise step).  With ``final="t_min"``: N + 1
points from the start down to t_min, no denoise step (for convergence studies).

Grids are float64, strictly decreasing and validated once.  Ratio-based grids (karras, logsnr)
start at the schedule's finite ``sigma_max``; ``uniform`` starts at ``t_max`` itself (t = 1 for
rectified flow).

The catalogue of the samplers' UIs (ComfyUI, diffusers; issue 16) is here too.  Those defined on a
model's discrete training timesteps k = 0..N-1 (``simple``, ``ddim_uniform``, ``leading``,
``trailing``; ``sgm_uniform`` and ``beta`` on their continuous version) place timestep k at

    t_k = t_min + (t_max - t_min) k / (N - 1),

the time axis of the schedule cut into N training timesteps.  For a diffusers model
(``DiscreteVPSchedule``: t_min = 1/N, t_max = 1) this is its own t_k = (k + 1)/N, so these grids
land exactly on the scheduler's timesteps; N defaults to the schedule's ``num_train_timesteps``
(1000 for the built-in continuous schedules).  On EDM t is sigma itself, so there they are spaced
in sigma (ComfyUI's EDM models use a log-spaced sigma table instead).  Several of these grids do
not end at t_min (``sgm_uniform`` drops its last point, ``trailing`` stops at t_k = N/steps - 1,
...): the step into 0 is taken from wherever they end, as in their originals.
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
LIST_RTOL = 1e-6          # a "list" grid may pass t_max (or sigma_max) by float32 rounding


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
_OWN_FIRST_POINT: set[str] = set()     # grids whose function also builds the 1-point grid


def register_grid(name: str, defaults: dict, doc: str, one_point: bool = False):
    """Register ``fn(schedule, n, t_min, **params) -> n decreasing times``.  ``one_point``: fn
    handles n = 1 itself (otherwise a 1-point grid is the grid family's start)."""
    def deco(fn):
        if name in _GRIDS:
            raise ValueError(f"grid {name!r} is already registered")
        _GRIDS[name] = (fn, defaults, doc)
        if one_point:
            _OWN_FIRST_POINT.add(name)
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
    t_max = float(schedule.t_max)
    if space == "ratio":
        # values copied from another library (diffusers' float32 sigmas) may exceed the
        # schedule's sigma/alpha at t_max by float32 rounding: accept them, start at t_max
        r_max = float(schedule.ratio(t_max))
        if math.isfinite(r_max) and float(v[0]) > r_max * (1 + LIST_RTOL):
            raise UserError("grid parameter 'values' of 'list'", values,
                            hint=f"strictly decreasing, positive sigma/alpha, at most the "
                                 f"schedule's {r_max:g} at t_max")
        t = schedule.t_from_ratio(v.clamp(max=r_max)) if math.isfinite(r_max) else \
            schedule.t_from_ratio(v)
    else:
        t = v
    if not (t[1:] < t[:-1]).all() or (t <= 0).any() or not torch.isfinite(t).all() \
            or t[0] > t_max * (1 + LIST_RTOL):
        raise UserError("grid parameter 'values' of 'list'", values,
                        hint=f"strictly decreasing, positive, at most t_max = {t_max:g}")
    t = t.clamp(max=t_max)
    if not (t[1:] < t[:-1]).all():
        raise UserError("grid parameter 'values' of 'list'", values,
                        hint=f"two values fall on t_max = {t_max:g} within float32 rounding")
    return t


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise UserError(f"grid parameter {name!r}", v, hint="a positive number")
    return float(v)


def _count(name, v, lo):
    """An integer parameter >= lo (an integral float such as 6.0 from a spec is accepted)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < lo:
        raise UserError(f"grid parameter {name!r}", v, hint=f"an integer >= {lo}")
    return int(v)


# --------------------------------------------------------------------------------------------
# the catalogue of ComfyUI / k-diffusion / diffusers schedulers (issue 16)
# --------------------------------------------------------------------------------------------

def _train_time(schedule, t_min, u):
    """Training-time fraction u in [0, 1] (u = k / (N - 1) for timestep k) -> t in [t_min, t_max]."""
    return t_min + (float(schedule.t_max) - t_min) * u


def _timesteps_to_t(schedule, t_min, k, N):
    return _train_time(schedule, t_min, k.to(torch.float64) / (N - 1))


def _train_steps(grid, num_train_timesteps, n):
    N = _count("num_train_timesteps", num_train_timesteps, 2)
    if n > N:
        raise UserError(f"steps for the {grid!r} grid", n,
                        hint=f"at most num_train_timesteps = {N} points (one per timestep)")
    return N


@register_grid("sgm_uniform", {},
               "uniform in t from t_max over n + 1 points, the last one (t_min) dropped "
               "(ComfyUI sgm_uniform)", one_point=True)
def _sgm_uniform(schedule, n, t_min, **_):
    """ComfyUI's ``sgm_uniform`` (``normal_scheduler(sgm=True)``, the SGM / Stability sampling
    convention): n + 1 points uniform in the model's timestep from t_max to t_min, the last one
    dropped, so the denoise step starts from t_min + (t_max - t_min)/n.  Its timestep axis is the
    schedule's t (on a diffusers model k = N t - 1, and ComfyUI's log-sigma interpolation between
    table entries is the DiscreteVPSchedule's log-SNR interpolation).  k-diffusion's
    ``get_sigmas_vp(n + 1)`` and ``DiscreteSchedule.get_sigmas(n + 1)`` without their last
    positive point are this grid on vp-linear and on a discrete model."""
    return torch.linspace(float(schedule.t_max), t_min, n + 1, dtype=torch.float64)[:-1]


@register_grid("simple", {"num_train_timesteps": None},
               "ComfyUI simple: timesteps k = N - 1 - floor(i N / n) of the N training "
               "timesteps (N: the schedule's, else 1000)", one_point=True)
def _simple(schedule, n, t_min, num_train_timesteps):
    """ComfyUI's ``simple`` scheduler: of the model's N training timesteps take
    k_i = N - 1 - floor(i N / n), i = 0..n-1 (every N/n-th from the top), then 0.  Timestep k sits
    at t_k = t_min + (t_max - t_min) k/(N - 1) (module docstring)."""
    N = _train_steps("simple", num_train_timesteps, n)
    i = torch.arange(n, dtype=torch.float64)
    k = (N - 1) - torch.floor(i * (N / n))
    return _timesteps_to_t(schedule, t_min, k, N)


def _leading_timesteps(grid, N, n, offset):
    step = N // n
    k = torch.arange(n - 1, -1, -1, dtype=torch.int64) * step + offset
    if n > N or int(k[0]) > N - 1:
        raise UserError(f"steps for the {grid!r} grid", n,
                        hint=f"leading spacing needs (steps - 1) * (N // steps) + offset <= N - 1 "
                             f"(N = num_train_timesteps = {N}, offset = {offset})")
    return k


@register_grid("ddim_uniform", {"num_train_timesteps": None},
               "ComfyUI ddim_uniform: timesteps 1, 1 + N//n, 1 + 2 N//n, ... (n of them), "
               "descending", one_point=True)
def _ddim_uniform(schedule, n, t_min, num_train_timesteps):
    """ComfyUI's ``ddim_uniform``: the timesteps k = 1 + j (N // n), j = 0..n-1, descending
    (DDIM's uniform skip with the offset 1 of Stable Diffusion's configs: diffusers' ``leading``
    spacing with ``steps_offset = 1``).  ComfyUI walks the table while k < N and so takes one more
    point when 1 + n (N // n) < N (e.g. 30 steps of 1000); here the grid has exactly n points."""
    N = _count("num_train_timesteps", num_train_timesteps, 2)
    return _timesteps_to_t(schedule, t_min, _leading_timesteps("ddim_uniform", N, n, 1), N)


@register_grid("leading", {"num_train_timesteps": None, "steps_offset": 0},
               "diffusers timestep_spacing='leading': k = j (N // n) + steps_offset, descending",
               one_point=True)
def _leading(schedule, n, t_min, num_train_timesteps, steps_offset):
    """diffusers' ``timestep_spacing="leading"`` (DDIMScheduler, EulerDiscreteScheduler, ...):
    step_ratio = N // n, timesteps k_j = j step_ratio + steps_offset, j = n-1..0, at
    t_k = t_min + (t_max - t_min) k/(N - 1) (= (k + 1)/N on a diffusers model).  It starts below
    t_max (k = (n - 1) step_ratio) and, with steps_offset = 0, ends at t_min."""
    N = _count("num_train_timesteps", num_train_timesteps, 2)
    offset = _count("steps_offset", steps_offset, 0)
    return _timesteps_to_t(schedule, t_min, _leading_timesteps("leading", N, n, offset), N)


@register_grid("trailing", {"num_train_timesteps": None},
               "diffusers timestep_spacing='trailing': k = round(N - j N / n) - 1, j = 0..n-1",
               one_point=True)
def _trailing(schedule, n, t_min, num_train_timesteps):
    """diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", Table 2): timesteps k_j = round(N - j N/n) - 1,
    j = 0..n-1 (round half to even, as numpy), at t_k = t_min + (t_max - t_min) k/(N - 1).  It
    starts at t_max (k = N - 1) and ends at k = round(N/n) - 1, above t_min."""
    N = _train_steps("trailing", num_train_timesteps, n)
    j = torch.arange(n, dtype=torch.float64)
    k = torch.round(N - j * (N / n)) - 1
    return _timesteps_to_t(schedule, t_min, k, N)


@register_grid("beta", {"alpha": 0.6, "beta": 0.6},
               "Lee et al. 2024 beta sampling: t at the Beta(alpha, beta) quantiles 1 - i/n, "
               "i = 0..n-1, of [t_min, t_max]", one_point=True)
def _beta(schedule, n, t_min, alpha, beta):
    """Beta sampling (Lee, Lin, Chen, Hua & Hsu 2024, "Beta Sampling is All You Need", as ComfyUI's
    ``beta`` scheduler): u_i = F^{-1}(1 - i/n), i = 0..n-1, with F the CDF of Beta(alpha, beta)
    (alpha = beta = 0.6 by default: dense at both ends of the trajectory), and
    t_i = t_min + (t_max - t_min) u_i.  It starts at t_max (u = 1) and ends at F^{-1}(1/n) > 0.
    ComfyUI rounds u (N - 1) to an integer timestep and drops repeats, which can lose steps; here
    u is used as it is, so the grid has exactly n points."""
    from scipy.special import betaincinv

    a, b = _positive("alpha", alpha), _positive("beta", beta)
    q = 1.0 - torch.arange(n, dtype=torch.float64) / n
    u = torch.as_tensor(betaincinv(a, b, q.numpy()), dtype=torch.float64)
    return _train_time(schedule, t_min, u)


@register_grid("kl_optimal", {},
               "Sabour et al. 2024 (AYS, KL-optimal): ratio = tan of atan(sigma_max) -> "
               "atan(sigma_min) uniformly", one_point=True)
def _kl_optimal(schedule, n, t_min, **_):
    """The KL-optimal schedule of Sabour, Fidler & Kreis 2024 ("Align Your Steps", ComfyUI's
    ``kl_optimal``): with w_i = i/(n - 1),
        sigma_i = tan((1 - w_i) atan(sigma_max) + w_i atan(sigma_min)),
    in the ratio sigma/alpha, from the schedule's finite ``sigma_max`` (80 for rectified flow,
    t = 80/81) to ratio(t_min): uniform in arctan(sigma/alpha)."""
    smax, smin = _start_ratio(schedule), float(schedule.ratio(t_min))
    w = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = torch.tan((1 - w) * math.atan(smax) + w * math.atan(smin))
    return schedule.t_from_ratio(sig)


@register_grid("linear_quadratic", {"threshold_noise": 0.025, "linear_steps": None},
               "Mochi / ComfyUI linear_quadratic: t / t_max falls linearly by threshold_noise over "
               "linear_steps (default n // 2), then quadratically to 0", one_point=True)
def _linear_quadratic(schedule, n, t_min, threshold_noise, linear_steps):
    """Genmo Mochi's linear-quadratic schedule (ComfyUI ``linear_quadratic``), in t / t_max
    (ComfyUI scales it by the model's sigma_max; for flow models that is t itself).  With
    L = linear_steps (default n // 2, at most n - 1), Q = n - L, c = threshold_noise, it is
    t_i = t_max (1 - v_i), i = 0..n-1, where
        v_i = c i / L                                      for i < L,
        v_i = c + (c / L)(i - L) + a (i - L)^2              for i >= L,  a = (L - c n) / (L Q^2):
    linear up to c, then the quadratic that continues with the same slope and reaches v = 1 at
    i = n (the denoise step).  It starts at t_max; points below t_min are raised to t_min."""
    c = _positive("threshold_noise", threshold_noise)
    if not c < 1:
        raise UserError("grid parameter 'threshold_noise'", threshold_noise, hint="in (0, 1)")
    if n == 1:
        return torch.full((1,), float(schedule.t_max), dtype=torch.float64)
    L = n // 2 if linear_steps is None else min(_count("linear_steps", linear_steps, 1), n - 1)
    Q = n - L
    i = torch.arange(n, dtype=torch.float64)
    a = (L - c * n) / (L * Q**2)
    v = torch.where(i < L, c * i / L, c + (c / L) * (i - L) + a * (i - L) ** 2)
    return float(schedule.t_max) * (1 - v)


# Align Your Steps: the 10-step schedules published by NVIDIA (research.nvidia.com/labs/toronto-ai/
# AlignYourSteps/howto.html).  SD 1.5 and SDXL are given as timesteps of Stable Diffusion's
# 1000-step scaled-linear schedule; SVD (an EDM-type model) as sigmas.
_AYS_SD_TIMESTEPS = {"sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0),
                     "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0)}
_AYS_SVD_SIGMAS = (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002)
AYS_MODELS = ("sd15", "sdxl", "svd")


def ays_table(model: str) -> torch.Tensor:
    """The 11 published sigmas (sigma/alpha, decreasing) of AYS's 10-step schedule for ``model``.
    SD 1.5 / SDXL: sigma_k = sqrt((1 - abar_k) / abar_k) at the published timesteps, with
    abar_k = prod_{j<=k} (1 - beta_j), beta = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2
    (float64; these are the values ComfyUI's AlignYourStepsScheduler lists)."""
    if model not in AYS_MODELS:
        raise UserError("grid parameter 'model' of 'ays'", model, list(AYS_MODELS))
    if model == "svd":
        return torch.tensor(_AYS_SVD_SIGMAS, dtype=torch.float64)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    k = torch.tensor(_AYS_SD_TIMESTEPS[model])
    return ((1 - abar[k]) / abar[k]).sqrt()


def _crossing(u, y, level):
    """The u where the decreasing piecewise-linear curve (u, y) passes ``level`` (inside it)."""
    j = int(torch.searchsorted(-y, torch.tensor([-level], dtype=torch.float64)))
    j = min(max(j, 1), len(y) - 1)
    return float(u[j - 1] + (u[j] - u[j - 1]) * (y[j - 1] - level) / (y[j - 1] - y[j]))


@register_grid("ays", {"model": "sd15"},
               "Align Your Steps (Sabour et al. 2024): the 10-step sigma table tuned for model = "
               "sd15|sdxl|svd, log-linearly interpolated to n points, cut to the schedule's range",
               one_point=True)
def _ays(schedule, n, t_min, model):
    """Align Your Steps (Sabour, Fidler & Kreis 2024): the published 10-step schedule (11 sigmas,
    see :func:`ays_table`), tuned for SD 1.5, SDXL or Stable Video Diffusion (``model``), used as a
    fixed profile of the ratio sigma/alpha.  As NVIDIA's ``loglinear_interp`` (and ComfyUI's
    AlignYourStepsScheduler), log sigma is interpolated linearly between the 11 entries placed at
    u = 0, 0.1, ..., 1, and the n points are read at u uniform: at n = 11 (steps = 10 with
    final="t_min", or steps = 11 with final="zero") the grid is the table itself.  ComfyUI's
    ``steps`` = s grid is this curve at s + 1 points with the last one replaced by 0.

    Where the table leaves the schedule's [ratio(t_min), sigma_max] (SVD's 700 on EDM's 80), the
    curve is cut where it crosses the range's ends and the n points are spread uniformly in u over
    the part that is left: the grid then starts at sigma_max (ends at ratio(t_min)) exactly and
    stays strictly decreasing.  On models other than the three it was tuned for, it is just one
    more fixed schedule shape."""
    table = ays_table(model)
    lo, hi = float(schedule.ratio(t_min)), _start_ratio(schedule)
    if not (float(table[-1]) < hi and float(table[0]) > lo):
        raise UserError("grid parameter 'model' of 'ays'", model,
                        hint=f"its sigmas [{float(table[-1]):g}, {float(table[0]):g}] miss the "
                             f"schedule's range [{lo:g}, {hi:g}]")
    y = torch.log(table)
    nodes = torch.linspace(0, 1, len(table), dtype=torch.float64)
    u_hi = 0.0 if float(table[0]) <= hi else _crossing(nodes, y, math.log(hi))
    u_lo = 1.0 if float(table[-1]) >= lo else _crossing(nodes, y, math.log(lo))
    u = torch.linspace(u_hi, u_lo, n, dtype=torch.float64)
    j = torch.clamp(torch.searchsorted(nodes, u, right=True), 1, len(table) - 1)
    frac = (u - nodes[j - 1]) / (nodes[j] - nodes[j - 1])
    log_sig = y[j - 1] + frac * (y[j] - y[j - 1])
    sig = torch.exp(log_sig)
    if u_hi > 0.0:
        sig[0] = hi
    if u_lo < 1.0:
        sig[-1] = lo
    return schedule.t_from_ratio(sig)


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
    if "num_train_timesteps" in kw and kw["num_train_timesteps"] is None:
        # resolved here so that the grid records the number it used
        kw["num_train_timesteps"] = int(schedule.params().get("num_train_timesteps", 1000))
    t_min = _t_min(schedule, params)
    n = steps if final == "zero" else steps + 1
    if name == "list":
        if kw["values"] is None:
            raise UserError("grid parameter 'values' of 'list'", None, hint="give the time points")
        t = fn(schedule, n, t_min, **kw)
        return Grid(t=torch.cat([t, t.new_zeros(1)]) if final == "zero" else t, name=name,
                    final=final, params={k: v for k, v in kw.items()})
    if n == 1 and name not in _OWN_FIRST_POINT:
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


# --------------------------------------------------------------------------------------------
# grid specs from the command line, spec files and JSON files; "auto"
# --------------------------------------------------------------------------------------------

AUTO = "auto"
AUTO_FALLBACK = "karras"


def recommended_grid(denoiser) -> tuple[str, dict]:
    """The grid a model's adapter recommends (``denoiser.recommended_grid = (name, params)``: a
    diffusers flow-matching folder's ``shift``), else ``karras``."""
    rec = getattr(denoiser, "recommended_grid", None)
    if rec is None:
        return AUTO_FALLBACK, {}
    name, params = rec
    return name, dict(params or {})


def resolve_grid(name: str, params: dict, denoiser) -> tuple[str, dict]:
    """(name, params) with ``"auto"`` replaced by the model's recommended grid
    (:func:`recommended_grid`); any other grid is returned as it is."""
    if name != AUTO:
        return name, dict(params or {})
    if params:
        raise UserError("grid parameter of 'auto'", sorted(params)[0],
                        hint="'auto' takes no parameters: name the grid to set them")
    return recommended_grid(denoiser)


def make_model_grid(denoiser, name: str, steps: int, final: str = "zero", **params) -> Grid:
    """:func:`make_grid` on the model's schedule, ``"auto"`` resolved for this model; the grid
    records the grid it resolved to (``grid.name``, ``grid.params``)."""
    name, params = resolve_grid(name, params, denoiser)
    return make_grid(name, denoiser.schedule, steps, final=final, **params)


GRID_FILE_METADATA = "metadata"     # a grid file's provenance (tune-grid's); never a parameter


def load_grid_file(path, field: str = "--grid", base=None) -> tuple[str, dict]:
    """A grid spec from a JSON file: ``{"name": "list", "values": [...], "space": "t"}`` or any
    grid with its parameters (what ``tune-grid`` writes); a ``"metadata"`` object (tune-grid's
    provenance and errors) is ignored.  ``path`` may carry the ``@`` of the
    command line; a relative path is taken from ``base`` (a spec file's folder) when given.  A
    missing or unreadable file, bad JSON, an unknown grid name or a parameter the grid does not
    take raise ``UserError`` naming the file; parameter values are checked when the grid is
    built (:func:`check_grid_spec` names the file there too)."""
    import json
    from pathlib import Path

    text = str(path)[1:] if str(path).startswith("@") else str(path)
    p = Path(text).expanduser()
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    where = f"{field} @{text}"
    if not text:
        raise UserError(field, str(path), hint="give a JSON file after '@', e.g. @my_grid.json")
    try:
        raw = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(where, str(p), hint="file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(where, str(p), hint=f"cannot read it as UTF-8 text: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(where, "not JSON", hint=f"{exc}; expected "
                        '{"name": "list", "values": [...], "space": "t"}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise UserError(where, doc if not isinstance(doc, dict) else doc.get("name"),
                        hint='expected a JSON object with a grid "name", e.g. {"name": "list", '
                             '"values": [80, 10, 1, 0.1], "space": "ratio"}')
    name = doc["name"]
    doc = {k: v for k, v in doc.items() if k != GRID_FILE_METADATA}    # provenance, not params
    if name not in _GRIDS:
        raise UserError(f"{where}: grid", name, available_grids())
    params = {k: v for k, v in doc.items() if k != "name"}
    unknown = sorted(set(params) - set(_GRIDS[name][1]) - {"t_min"})
    if unknown:
        raise UserError(f"{where}: grid parameter of {name!r}", unknown[0],
                        sorted(_GRIDS[name][1]) + ["t_min"])
    return name, params


def check_grid_spec(name: str, params: dict, denoiser, final: str, source: str | None = None,
                    steps: int = 2) -> None:
    """Build the grid once on ``denoiser``'s schedule to validate its parameters; errors of a
    grid read from a file name the file (``source``)."""
    if name == "list" and isinstance(params.get("values"), (list, tuple)):
        steps = max(1, len(params["values"]) - (1 if final == "t_min" else 0))
    try:
        make_model_grid(denoiser, name, steps, final=final, **params)
    except UserError as exc:
        if source is None:
            raise
        raise UserError(f"{source}: {exc.field}", exc.value, exc.choices, exc.hint) from None
