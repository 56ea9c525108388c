"""Noise schedules x_t = alpha(t) * x_data + sigma(t) * eps.

Conventions (``shared/DESIGN.md``): t in [0, T], t = 0 is data, t = T is noise, sampling runs from
``t_max`` down to ``t_min``.  Every schedule gives alpha, sigma and their exact time derivatives, the
noise-to-signal ratio ``ratio(t) = sigma / alpha`` (the k-diffusion "sigma"), the log-SNR
``log_snr(t) = log(alpha^2 / sigma^2) = -2 log ratio(t)`` and their inverses.

``sigma_min`` / ``sigma_max`` are the ratio at the ends of the sampling interval.  Where the ratio is
infinite at ``t_max`` (rectified flow and trig at t = 1, where alpha = 0), ``sigma_max`` is the
finite value at which ratio-based grids (karras, logsnr) start.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _as_tensor(t) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.double()
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule:
    """Base class.  Subclasses define ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` and
    ``t_from_ratio``; everything else derives from them."""

    name: str = ""
    t_min: float
    t_max: float
    sigma_min: float
    sigma_max: float

    # --- to be implemented -------------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        raise NotImplementedError

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t) -> Tensor:
        raise NotImplementedError

    def t_from_ratio(self, ratio) -> Tensor:
        """Inverse of :meth:`ratio` (sigma / alpha is strictly increasing in t)."""
        raise NotImplementedError

    # --- derived ------------------------------------------------------------------------------
    def ratio(self, t) -> Tensor:
        """sigma(t) / alpha(t): the equivalent VE noise level (k-diffusion's sigma)."""
        t = _as_tensor(t)
        return self.sigma(t) / self.alpha(t)

    def log_snr(self, t) -> Tensor:
        """log(alpha^2 / sigma^2); +inf at t = 0, decreasing in t."""
        t = _as_tensor(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, lam) -> Tensor:
        lam = _as_tensor(lam)
        return self.t_from_ratio(torch.exp(-0.5 * lam))

    def coefficients(self, t) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        t = _as_tensor(t)
        return self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)

    def d_log_ratio(self, t) -> Tensor:
        """d/dt log(sigma / alpha) = sigma'/sigma - alpha'/alpha (> 0)."""
        t = _as_tensor(t)
        return self.d_sigma(t) / self.sigma(t) - self.d_alpha(t) / self.alpha(t)

    def params(self) -> dict:
        return {"t_min": self.t_min, "t_max": self.t_max,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


class VPLinear(Schedule):
    """Variance-preserving schedule with linear beta(t) (DDPM / Song et al. 2021, VP-SDE).

    log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,  sigma = sqrt(1 - alpha^2).
    """

    name = "vp-linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_min = float(self.ratio(self.t_min))
        self.sigma_max = float(self.ratio(self.t_max))

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return torch.exp(self._log_alpha(_as_tensor(t)))

    def sigma(self, t):
        # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)), accurate for small t
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(_as_tensor(t))))

    def d_alpha(self, t):
        t = _as_tensor(t)
        return -0.5 * self._beta(t) * self.alpha(t)

    def d_sigma(self, t):
        t = _as_tensor(t)
        a = self.alpha(t)
        return 0.5 * self._beta(t) * a**2 / self.sigma(t)

    def t_from_ratio(self, ratio):
        ratio = _as_tensor(ratio)
        # -log alpha^2 = log(1 + ratio^2) = t^2 db/2 + t beta_min
        L = torch.log1p(ratio**2)
        db = self.beta_max - self.beta_min
        return 2.0 * L / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * db * L))

    def params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, **super().params()}


class VPCosine(Schedule):
    """Cosine schedule of Nichol & Dhariwal (2021): alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s)),
    sigma = sqrt(1 - alpha^2).  ``t_max`` defaults to 0.9946 as in DPM-Solver (alpha -> 0 at t = 1)."""

    name = "vp-cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._c0 = math.cos(0.5 * math.pi * self.s / (1 + self.s))
        self.sigma_min = float(self.ratio(self.t_min))
        self.sigma_max = float(self.ratio(self.t_max))

    def _phase(self, t):
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def alpha(self, t):
        return torch.cos(self._phase(_as_tensor(t))) / self._c0

    def sigma(self, t):
        a = self.alpha(t)
        return torch.sqrt((1 - a) * (1 + a))

    def d_alpha(self, t):
        t = _as_tensor(t)
        return -torch.sin(self._phase(t)) * (0.5 * math.pi / (1 + self.s)) / self._c0

    def d_sigma(self, t):
        t = _as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_ratio(self, ratio):
        ratio = _as_tensor(ratio)
        a = 1.0 / torch.sqrt(1.0 + ratio**2)
        return torch.acos(a * self._c0) * (1 + self.s) / (0.5 * math.pi) - self.s

    def params(self):
        return {"s": self.s, **super().params()}


class VE(Schedule):
    """Variance-exploding schedule of Song et al. (2021): alpha = 1,
    sigma(t) = sigma_lo * (sigma_hi / sigma_lo)^t for t in [0, 1] (sigma(0) = sigma_lo > 0 is the
    SMLD convention; sampling stops at t_min where sigma = sigma_min)."""

    name = "ve"

    def __init__(self, sigma_lo: float = 0.01, sigma_hi: float = 50.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        self._k = math.log(self.sigma_hi / self.sigma_lo)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_min = float(self.sigma(self.t_min))
        self.sigma_max = float(self.sigma(self.t_max))

    def alpha(self, t):
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t):
        return self.sigma_lo * torch.exp(self._k * _as_tensor(t))

    def d_alpha(self, t):
        return torch.zeros_like(_as_tensor(t))

    def d_sigma(self, t):
        return self._k * self.sigma(t)

    def t_from_ratio(self, ratio):
        return torch.log(_as_tensor(ratio) / self.sigma_lo) / self._k

    def params(self):
        return {"sigma_lo": self.sigma_lo, "sigma_hi": self.sigma_hi, **super().params()}


class EDM(Schedule):
    """EDM schedule (Karras et al. 2022): alpha = 1, sigma = t, t in [0.002, 80]."""

    name = "edm"

    def __init__(self, t_min: float = 0.002, t_max: float = 80.0):
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_min, self.sigma_max = self.t_min, self.t_max

    def alpha(self, t):
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return torch.zeros_like(_as_tensor(t))

    def d_sigma(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_from_ratio(self, ratio):
        return _as_tensor(ratio).clone()


class RectifiedFlow(Schedule):
    """Rectified flow / linear interpolant: alpha = 1 - t, sigma = t, t in [0, 1].

    The ratio t / (1 - t) is infinite at t = 1; ratio-based grids start at ``sigma_max`` (80 by
    default, t = 80/81).  ``t_min`` defaults to the t with ratio 0.002, matching EDM's sigma_min."""

    name = "rf"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, t_max: float = 1.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min = float(self.t_from_ratio(self.sigma_min))
        self.t_max = float(t_max)

    def alpha(self, t):
        return 1.0 - _as_tensor(t)

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return -torch.ones_like(_as_tensor(t))

    def d_sigma(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_from_ratio(self, ratio):
        ratio = _as_tensor(ratio)
        out = ratio / (1.0 + ratio)
        return torch.where(torch.isinf(ratio), torch.ones_like(out), out)


class Trig(Schedule):
    """Trigonometric interpolant (Albergo & Vanden-Eijnden; sCM): alpha = cos(pi t / 2),
    sigma = sin(pi t / 2), t in [0, 1]; ratio = tan(pi t / 2), infinite at t = 1."""

    name = "trig"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, t_max: float = 1.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min = float(self.t_from_ratio(self.sigma_min))
        self.t_max = float(t_max)

    def alpha(self, t):
        t = _as_tensor(t)
        # cos(pi/2) is 6e-17 in floating point; force the exact zero at t = 1
        return torch.where(t == 1.0, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * _as_tensor(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * _as_tensor(t))

    def d_sigma(self, t):
        t = _as_tensor(t)
        return torch.where(t == 1.0, torch.zeros_like(t), 0.5 * math.pi * torch.cos(0.5 * math.pi * t))

    def t_from_ratio(self, ratio):
        return torch.atan(_as_tensor(ratio)) / (0.5 * math.pi)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (VPLinear, VPCosine, VE, EDM, RectifiedFlow, Trig)
}


def make_schedule(name: str, **params) -> Schedule:
    """Build a schedule by name; unknown names and parameters raise ``UserError``."""
    from samplerbench.models.errors import UserError

    if name not in SCHEDULES:
        raise UserError("schedule", name, sorted(SCHEDULES))
    cls = SCHEDULES[name]
    for key, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"schedule parameter {key!r} of {name!r}", v, hint="a finite number")
    try:
        sched = cls(**params)
    except TypeError as exc:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise UserError(f"schedule parameters of {name!r}", sorted(params), valid) from exc
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise UserError(f"schedule parameters of {name!r}", params, hint=str(exc)) from None
    lo, hi = sched.t_min, sched.t_max
    smin, smax = float(sched.sigma_min), float(sched.sigma_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise UserError(f"schedule parameters of {name!r}", params,
                        hint=f"they give t_min = {lo:g}, t_max = {hi:g}; need 0 < t_min < t_max")
    if not (math.isfinite(smin) and math.isfinite(smax) and 0 < smin < smax):
        raise UserError(f"schedule parameters of {name!r}", params, hint=f"they give sigma/alpha "
                        f"from {smin:g} to {smax:g}; need 0 < sigma_min < sigma_max, finite")
    return sched
