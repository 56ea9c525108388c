"""Analytic Gaussian-mixture denoiser: the exact posterior mean E[x0 | x_t] in any dimension.

p_data = sum_k w_k N(mu_k, C_k).  Under x_t = alpha x0 + sigma eps the component k has
x_t | k ~ N(alpha mu_k, alpha^2 C_k + sigma^2 I), and with C_k = U_k diag(l_k) U_k^T

    E[x0 | x_t, k] = mu_k + U_k diag(alpha l_k / (alpha^2 l_k + sigma^2)) U_k^T (x_t - alpha mu_k),
    E[x0 | x_t]    = sum_k r_k(x_t) E[x0 | x_t, k],   r_k = posterior responsibilities.

This is the exact denoiser, so its PF-ODE transports N(0, sigma_max^2) (approximately, as for any
model) to the mixture; it is the test bed for convergence orders with a known answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from samplerbench.models.conversions import expand_like
from samplerbench.models.denoiser import Denoiser
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import SCHEDULES, Schedule, make_schedule

Tensor = torch.Tensor


class GaussianMixture:
    """Mixture parameters (float64) with exact sampling and log-density.

    Full covariances ``covs`` [K, d, d], or diagonal ones given by their ``variances`` [K, d]
    (what ``stds`` in a ``gmm:`` file means).  A diagonal mixture keeps only the [K, d]
    variances -- never a d x d matrix -- so it scales to any dimension (d = 10,000 costs
    K x d numbers); its denoiser applies the same formula with U_k = I."""

    def __init__(self, weights, means, covs=None, *, variances=None):
        if (covs is None) == (variances is None):
            raise ValueError("give covs or variances")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        K, d = self.means.shape
        if self.weights.shape != (K,):
            raise ValueError("inconsistent mixture shapes")
        self.weights = self.weights / self.weights.sum()
        self.diagonal = variances is not None
        if self.diagonal:
            var = torch.as_tensor(variances, dtype=torch.float64)
            if var.shape != (K, d):
                raise ValueError("inconsistent mixture shapes")
            if not ((var > 0) & torch.isfinite(var)).all():
                raise ValueError("variances must be positive")
            self.eigvals, self.eigvecs = var, None          # U_k = I: none stored
            self._covs = None
        else:
            covs = torch.as_tensor(covs, dtype=torch.float64)
            if covs.shape != (K, d, d):
                raise ValueError("inconsistent mixture shapes")
            self._covs = 0.5 * (covs + covs.transpose(1, 2))
            self.eigvals, self.eigvecs = torch.linalg.eigh(self._covs)
            if (self.eigvals <= 0).any():
                raise ValueError("covariances must be positive definite")

    @property
    def variances(self) -> Tensor:
        """The diagonals of the covariances, [K, d]."""
        return self.eigvals if self.diagonal else self._covs.diagonal(dim1=1, dim2=2)

    @property
    def covs(self) -> Tensor:
        """The covariances as dense [K, d, d] matrices (built on each access for a diagonal
        mixture: K d^2 numbers, avoid it in high dimension)."""
        return torch.diag_embed(self.eigvals) if self.diagonal else self._covs

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """The mixture's covariance, d x d (dense even for a diagonal mixture: the means
        couple the coordinates)."""
        m = self.mean()
        dm = self.means - m
        within = (torch.diag(self.weights @ self.eigvals) if self.diagonal else
                  torch.einsum("k,kij->ij", self.weights, self._covs))
        return within + torch.einsum("k,ki,kj->ij", self.weights, dm, dm)

    def cov_times(self, v: Tensor) -> Tensor:
        """:meth:`covariance` @ v for v [d, m], in O(K d m) for a diagonal mixture."""
        v = v.to(torch.float64)
        dm = self.means - self.mean()
        within = ((self.weights @ self.eigvals)[:, None] * v if self.diagonal else
                  torch.einsum("k,kij,jm->im", self.weights, self._covs, v))
        return within + dm.T @ (self.weights[:, None] * (dm @ v))

    def trace_covariance(self) -> float:
        """tr of :meth:`covariance`, in O(K d)."""
        dm = self.means - self.mean()
        return float(self.weights @ (self.variances.sum(1) + dm.pow(2).sum(1)))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        # per component, not per sample: an [n, d, d] gather needs n d^2 memory (3 GB for 1e5 x 64)
        x = torch.empty_like(z)
        for j in range(len(self.weights)):
            idx = k == j
            scaled = z[idx] * self.eigvals[j].sqrt()
            x[idx] = self.means[j] + (scaled if self.diagonal else scaled @ self.eigvecs[j].T)
        return x


class GMMDenoiser(Denoiser):
    """Exact posterior-mean denoiser of a :class:`GaussianMixture` under a schedule.

    ``data_shape`` may be any shape with prod == dim (e.g. (1, 8, 8) for digits)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule,
                 data_shape: tuple[int, ...] | None = None):
        data_shape = tuple(data_shape) if data_shape else (mixture.dim,)
        if math.prod(data_shape) != mixture.dim:
            raise ValueError(f"data_shape {data_shape} does not hold {mixture.dim} dimensions")
        super().__init__(schedule, data_shape)
        self.mixture = mixture
        self._cache: dict = {}

    def _params(self, dtype, device):
        key = (dtype, device)
        if key not in self._cache:
            m = self.mixture
            self._cache[key] = tuple(None if p is None else p.to(dtype=dtype, device=device)
                                     for p in (m.weights.log(), m.means, m.eigvals, m.eigvecs))
        return self._cache[key]

    def forward(self, x, t, **cond):
        B = x.shape[0]
        logw, mu, lam, U = self._params(x.dtype, x.device)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(B)
        a = self.schedule.alpha(t).to(x.dtype)[:, None, None]      # [B, 1, 1]
        s2 = (self.schedule.sigma(t) ** 2).to(x.dtype)[:, None, None]
        xf = x.reshape(B, 1, -1)                                     # [B, 1, d]
        diff = xf - a * mu[None]                                     # [B, K, d]
        # coordinates in each component's eigenbasis (a diagonal mixture's is the standard one)
        y = diff if U is None else torch.einsum("bkd,kde->bke", diff, U)
        var = a**2 * lam[None] + s2                                  # [B, K, d]
        logp = logw[None] - 0.5 * (torch.log(var) + y**2 / var).sum(-1)
        r = torch.softmax(logp, dim=1)                               # [B, K]
        shrink = a * lam[None] / var * y
        if U is not None:
            shrink = torch.einsum("bke,kde->bkd", shrink, U)
        x0 = torch.einsum("bk,bkd->bd", r, mu[None] + shrink)
        return x0.reshape(x.shape)

    def exact_samples(self, n: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.mixture.sample(n, g).reshape((n,) + self.data_shape)


# --------------------------------------------------------------------------------------------
# gmm:PATH.json
# --------------------------------------------------------------------------------------------

_GMM_KEYS = {"weights", "means", "stds", "covs", "schedule", "t_min", "t_max", "schedule_params",
             "data_shape"}


def mixture_from_dict(spec: dict, where: str = "gmm") -> tuple[GaussianMixture, dict]:
    """Validate a mixture spec (the ``gmm:PATH.json`` format) and build it.

    Returns the mixture and the schedule keywords."""
    if not isinstance(spec, dict):
        raise UserError(where, type(spec).__name__, hint="expected a JSON object with keys "
                        "weights, means, stds|covs, schedule")
    unknown = sorted(set(spec) - _GMM_KEYS)
    if unknown:
        raise UserError(f"{where} key", unknown[0], sorted(_GMM_KEYS))
    for key in ("weights", "means"):
        if key not in spec:
            raise UserError(f"{where}.{key}", None, hint=f"'{key}' is required")
    try:
        w = torch.as_tensor(spec["weights"], dtype=torch.float64)
        mu = torch.as_tensor(spec["means"], dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}.weights/means", str(exc), hint="expected numbers") from None
    if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0] or w.shape[0] == 0:
        raise UserError(f"{where}.means", list(mu.shape),
                        hint=f"expected [K, d] means with K = len(weights) = {tuple(w.shape)}")
    if (w <= 0).any() or not torch.isfinite(w).all():
        raise UserError(f"{where}.weights", spec["weights"], hint="weights must be positive")
    if not torch.isfinite(mu).all():
        raise UserError(f"{where}.means", _first_bad(mu), hint="means must be finite numbers "
                        "(no NaN or infinity)")
    K, d = mu.shape
    if ("stds" in spec) == ("covs" in spec):
        raise UserError(f"{where}.stds|covs", None, hint="give exactly one of 'stds' or 'covs'")
    if "stds" in spec:
        try:
            std = torch.as_tensor(spec["stds"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"{where}.stds", str(exc), hint="expected numbers") from None
        if std.shape not in ((K,), (K, d)) or not ((std > 0) & torch.isfinite(std)).all():
            raise UserError(f"{where}.stds", _short(spec["stds"]), hint=f"expected {K} positive "
                            f"numbers (one per component) or [{K}, {d}] (one per coordinate)")
        # diagonal covariances, kept as [K, d] variances (a [K] std is broadcast, not copied)
        variances = (std[:, None] if std.ndim == 1 else std) ** 2
        covs = None
    else:
        try:
            covs = torch.as_tensor(spec["covs"], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}.covs", str(exc), hint="expected numbers") from None
        if covs.shape != (K, d, d):
            raise UserError(f"{where}.covs", list(covs.shape), hint=f"expected shape [{K}, {d}, {d}]")
        if not torch.isfinite(covs).all():      # NaN eigenvalues would pass the > 0 test
            raise UserError(f"{where}.covs", _first_bad(covs), hint="covariances must be finite "
                            "numbers (no NaN or infinity)")
    try:
        mixture = (GaussianMixture(w, mu, covs) if covs is not None else
                   GaussianMixture(w, mu, variances=variances.expand(K, d)))
    except ValueError as exc:
        raise UserError(f"{where}.covs", "not positive definite", hint=str(exc)) from None
    sched = spec.get("schedule", "edm")
    if sched not in SCHEDULES:
        raise UserError(f"{where}.schedule", sched, sorted(SCHEDULES))
    params = spec.get("schedule_params", {})
    if not isinstance(params, dict):
        raise UserError(f"{where}.schedule_params", params, hint='an object of numbers, e.g. '
                        '{"sigma_max": 80}')
    kw = dict(params)
    for key in ("t_min", "t_max"):
        if key in spec:
            kw[key] = spec[key]
    for key, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            field = f"{where}.{key}" if key in ("t_min", "t_max") else \
                f"{where}.schedule_params.{key}"
            raise UserError(field, v, hint="a finite number")
    if sched in ("rf", "trig") and "t_min" in kw and not 0 < kw["t_min"] < 1:
        raise UserError(f"{where}.t_min", kw["t_min"], hint=f"the {sched} schedule lives on "
                        "t in [0, 1]: t_min must lie in (0, 1)")
    return mixture, {"name": sched, **kw}


def _short(v):
    """A value for a message: a long list is cut."""
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_bad(x: Tensor):
    """The first non-finite entry, for the message."""
    return float(x[~torch.isfinite(x)][0])


def load_gmm_json(path: str) -> GMMDenoiser:
    p = Path(path)
    if not p.is_file():
        raise UserError("model", f"gmm:{path}", hint="file not found; give gmm:PATH.json")
    try:
        spec = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"gmm:{path}", "not UTF-8", hint=f"byte {exc.start}: save the mixture "
                        "as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"gmm:{path}", "malformed JSON", hint=str(exc)) from None
    mixture, sched_kw = mixture_from_dict(spec, where=f"gmm:{p.name}")
    name = sched_kw.pop("name")
    if "t_min" in sched_kw and name in ("rf", "trig"):
        # rf / trig define t_min through sigma_min
        t = sched_kw.pop("t_min")
        sched_kw["sigma_min"] = t / (1 - t) if name == "rf" else math.tan(0.5 * math.pi * t)
    try:
        schedule = make_schedule(name, **sched_kw)
    except UserError as exc:       # name the file's keys, not the schedule's derived ones
        given = {k: spec[k] for k in ("t_min", "t_max", "schedule_params") if k in spec}
        raise UserError(f"gmm:{p.name} schedule {name!r}", given, hint=exc.hint) from None
    shape = spec.get("data_shape", [mixture.dim])
    if (not isinstance(shape, list) or not all(isinstance(v, int) and v > 0 for v in shape)
            or math.prod(shape) != mixture.dim):
        raise UserError(f"gmm:{p.name}.data_shape", shape,
                        hint=f"expected positive integers with product {mixture.dim}")
    return GMMDenoiser(mixture, schedule, tuple(shape))


# --------------------------------------------------------------------------------------------
# built-in mixtures
# --------------------------------------------------------------------------------------------

def gmm2d_mixture() -> GaussianMixture:
    """A 2-D, 4-component anisotropic mixture with unequal weights (modes at distance ~2)."""
    def rot(theta, sx, sy):
        c, s = math.cos(theta), math.sin(theta)
        R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        return R @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ R.T

    weights = [0.35, 0.25, 0.25, 0.15]
    means = [[-1.5, -0.5], [1.5, 0.8], [0.2, 1.8], [0.5, -1.8]]
    covs = torch.stack([rot(0.3, 0.5, 0.15), rot(-0.8, 0.4, 0.1), rot(1.2, 0.3, 0.2),
                        rot(0.0, 0.2, 0.2)])
    return GaussianMixture(weights, means, covs)


def digits_data(scale: bool = True) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn) scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float64)
    if scale:
        x = x / 8.0 - 1.0
    return x, torch.as_tensor(d.target)


_GMM64: GaussianMixture | None = None


def gmm64_mixture(reg: float = 0.05) -> GaussianMixture:
    """A 64-D mixture fitted to digits: one full-covariance component per class (weight = class
    frequency, empirical mean and covariance + reg * I so every covariance is positive definite)."""
    global _GMM64
    if _GMM64 is None:
        x, y = digits_data()
        w, mus, covs = [], [], []
        for k in range(10):
            xk = x[y == k]
            w.append(len(xk))
            mus.append(xk.mean(0))
            covs.append(torch.cov(xk.T) + reg * torch.eye(64, dtype=torch.float64))
        _GMM64 = GaussianMixture(w, torch.stack(mus), torch.stack(covs))
    return _GMM64
