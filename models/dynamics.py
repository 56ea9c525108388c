"""The PF-ODE and the reverse-SDE family of a denoiser.

PF-ODE:       dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat
Reverse SDE:  dx = [v(t, x) - 1/2 g(t)^2 score(t, x)] dt + g(t) dW,  integrated backwards in t,
              g(t)^2 = eta^2 * 2 sigma^2 d/dt log(sigma / alpha).
eta = 0 is the PF-ODE; eta = 1 the reverse of the forward noising process (for flow models the
marginal-preserving flow SDE).  Solvers get one of these objects; they never see the model type.
"""

from __future__ import annotations

import torch

from samplerbench.models.conversions import eps_from_x0, expand_like, velocity_from_x0_eps
from samplerbench.models.denoiser import CountingDenoiser, Denoiser
from samplerbench.models.guidance import UNCOND_KEY, provides_uncond

Tensor = torch.Tensor


class _Dynamics(torch.nn.Module):
    def __init__(self, denoiser: Denoiser, cond: dict | None = None):
        super().__init__()
        if not isinstance(denoiser, CountingDenoiser):
            denoiser = CountingDenoiser(denoiser)
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.cond = dict(cond or {})
        self._coef: dict[float, tuple[float, float, float, float]] = {}
        self._tvec: dict = {}
        self._vel: dict[float, tuple[float, float]] = {}

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    @property
    def forward_passes(self) -> int:
        return self.denoiser.forward_passes

    def _t(self, t, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def denoise(self, t, x: Tensor) -> Tensor:
        """x0_hat = D(x, t); 1 NFE.  ``t`` is a scalar or per-sample [B]."""
        # the counting wrapper is ours and has no hooks: call its forward directly
        return self.denoiser.forward(x, self._tv(t, x), **self.cond)

    @property
    def guided(self) -> bool:
        """Whether the denoiser is classifier-free guided (``denoise_pair`` then returns the
        unconditional output separately)."""
        g = self.__dict__.get("_guided")
        if g is None:
            g = self.__dict__["_guided"] = provides_uncond(self.denoiser)
        return g

    def denoise_pair(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, x0_uncond) at t, 1 NFE: the guided output and the unconditional one, for
        samplers that use both (CFG++).  Under classifier-free guidance both halves run (2 forward
        passes, also at w = 0); without guidance there is no other output and x0_uncond *is*
        x0_hat (the same tensor object: callers may test ``is``)."""
        if not self.guided:
            x0 = self.denoise(t, x)
            return x0, x0
        both = self.denoiser.forward(x, self._tv(t, x), **self.cond, **{UNCOND_KEY: True})
        B = x.shape[0]
        return both[:B], both[B:]

    def _tv(self, t, x: Tensor) -> Tensor:
        """The per-sample time vector [B] in x's dtype."""
        if isinstance(t, (float, int)):
            # the per-sample time vector of a scalar time is built once per (t, batch, dtype)
            key = (float(t), x.shape[0], x.dtype, x.device)
            tv = self._tvec.get(key)
            if tv is None:
                if len(self._tvec) > 4096:
                    self._tvec.clear()
                tv = self._tvec[key] = torch.full((x.shape[0],), float(t), dtype=x.dtype,
                                                  device=x.device)
        else:
            tv = self._t(t, x).to(x.dtype)
        return tv

    def prime(self, times) -> None:
        """Compute alpha, sigma, alpha', sigma' at every time in ``times`` in one vectorised float64
        call and cache them, so that the per-step look-ups of a solve cost no tensor work.
        Fixed-step solvers call this once per solve with the grid (and their stage times)."""
        cache = self._coef
        new = sorted({float(t) for t in times} - cache.keys())
        if not new:
            return
        if len(cache) + len(new) > 4096:
            cache.clear()
            self._vel.clear()
        cs = self.schedule.coefficients(torch.tensor(new, dtype=torch.float64))
        for t, a, s, da, ds in zip(new, *(c.tolist() for c in cs)):
            cache[t] = (a, s, da, ds)

    def scalars(self, t: float) -> tuple[float, float, float, float]:
        """alpha, sigma, alpha', sigma' at a scalar time as Python floats (float64, cached)."""
        c = self._coef.get(t)
        if c is None:
            key = float(t)
            c = self._coef.get(key)
            if c is None:
                c = tuple(float(v) for v in self.schedule.coefficients(
                    torch.tensor(key, dtype=torch.float64)))
                if len(self._coef) > 4096:
                    self._coef.clear()
                    self._vel.clear()
                self._coef[key] = c
        return c

    def coefficients(self, t, x: Tensor):
        """alpha, sigma, alpha', sigma' at t, broadcast against x (no model call).

        For one time for the whole batch (the solvers' case) they are Python floats, computed
        in float64 once per time value and cached: the hot loop pays no per-sample work."""
        if isinstance(t, (float, int)) or (isinstance(t, Tensor) and t.ndim == 0):
            return self.scalars(float(t))
        return tuple(expand_like(c, x) for c in self.schedule.coefficients(self._t(t, x)))

    def x0_eps(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) at t; 1 NFE."""
        x0 = self.denoise(t, x)
        a, s, _, _ = self.coefficients(t, x)
        if isinstance(a, float):
            # (x - alpha x0) / sigma in two passes over the state
            return x0, torch.add(x, x0, alpha=-a).div_(s)
        return x0, eps_from_x0(x, x0, a, s)

    def velocity_coefficients(self, t: float) -> tuple[float, float]:
        """(c_x, c_x0) with velocity = c_x x + c_x0 x0_hat at a scalar time:
        alpha' x0 + sigma' (x - alpha x0) / sigma = (sigma'/sigma) x + (alpha' - sigma' alpha/sigma) x0."""
        c = self._vel.get(t)
        if c is None:
            a, s, da, ds = self.scalars(t)
            c = self._vel[t] = (ds / s, da - ds * a / s)
        return c

    def velocity(self, t, x: Tensor) -> Tensor:
        """PF-ODE right-hand side dx/dt; 1 NFE."""
        x0 = self.denoise(t, x)
        if isinstance(t, (float, int)):
            cx, c0 = self.velocity_coefficients(float(t))
            # alpha' x0_hat + sigma' eps_hat as one linear combination: two passes over the state
            return torch.mul(x, cx).add_(x0, alpha=c0)
        a, s, da, ds = self.coefficients(t, x)
        return velocity_from_x0_eps(x0, eps_from_x0(x, x0, a, s), da, ds)


class ProbabilityFlowODE(_Dynamics):
    """PF-ODE of a denoiser; ``forward(t, x)`` is the torchdiffeq right-hand side."""

    kind = "ode"

    def forward(self, t, x):
        return self.velocity(t, x)


class ReverseSDE(_Dynamics):
    """Reverse-time SDE family with noise scale ``eta`` (Ito; additive noise, diagonal g(t))."""

    kind = "sde"

    def __init__(self, denoiser: Denoiser, eta: float = 1.0, cond: dict | None = None):
        super().__init__(denoiser, cond)
        self.eta = float(eta)

    def g2(self, t, x: Tensor) -> Tensor:
        """g(t)^2 = eta^2 2 sigma^2 d/dt log(sigma/alpha), broadcast against x."""
        t = self._t(t, x)
        s = self.schedule.sigma(t)
        return expand_like(self.eta**2 * 2.0 * s**2 * self.schedule.d_log_ratio(t), x)

    def diffusion(self, t, x: Tensor) -> Tensor:
        return torch.sqrt(self.g2(t, x))

    def drift(self, t, x: Tensor) -> Tensor:
        """v - 1/2 g^2 score = v + 1/2 g^2 eps / sigma (dt-drift; integrate with dt < 0); 1 NFE."""
        x0 = self.denoise(t, x)
        a, s, da, ds = self.coefficients(t, x)
        eps = eps_from_x0(x, x0, a, s)
        return velocity_from_x0_eps(x0, eps, da, ds) + 0.5 * self.g2(t, x) * eps / s

    def forward(self, t, x):
        return self.drift(t, x)

    def torchsde_view(self, data_shape: tuple[int, ...] | None = None) -> "TorchsdeView":
        return TorchsdeView(self, data_shape or self.denoiser.data_shape)


class TorchsdeView(torch.nn.Module):
    """The reverse SDE in torchsde's form: forward time s = -t, state flattened to [B, D].

    dy/ds = -drift(-s, y), diffusion g(-s) (diagonal noise, Ito)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde: ReverseSDE, data_shape: tuple[int, ...]):
        super().__init__()
        self.sde = sde
        self.data_shape = tuple(data_shape)

    def _unflat(self, y):
        return y.reshape((y.shape[0],) + self.data_shape)

    def f(self, s, y):
        return -self.sde.drift(-s, self._unflat(y)).reshape(y.shape)

    def g(self, s, y):
        return self.sde.diffusion(-s, self._unflat(y)).reshape(y.shape[0], -1).expand_as(y)
