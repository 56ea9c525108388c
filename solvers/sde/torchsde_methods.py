"""torchsde's fixed-step SDE methods on our grids: ``torchsde_euler``, ``torchsde_milstein``,
``torchsde_srk``, ``torchsde_reversible_heun``.

They integrate ``ReverseSDE.torchsde_view()`` (forward time s = -t, state flattened to [B, D]) with
torchsde's own method objects, one ``step(s0, s1, y, extra)`` per grid interval -- the code that
``torchsdeint`` runs between its output times.  ``sdeint`` itself is not called: with fixed ``dt``
it cannot land on a non-uniform grid (it interpolates linearly between its own steps), and one
call per interval would evaluate the drift once more per call in its contract check.

The Brownian motion is our per-sample noise source (``fresh`` or ``brownian``), wrapped as a
torchsde ``BaseBrownian``: the increment over [s0, s1] is sqrt(s1 - s0) noise(t0, t1), the same
numbers ``euler_maruyama`` gets, so ``torchsde_euler`` equals ``euler_maruyama`` on the same path.
The reverse SDE has additive noise (g depends on t only), so Ito and Stratonovich coincide and the
view can be declared either (reversible Heun is a Stratonovich method).  Where alpha = 0 the
diffusion g is infinite: these solvers decline that start (``check``) like ``euler_maruyama``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from samplerbench.solvers.base import Solver
from samplerbench.solvers.registry import register_solver

_TORCHSDE_REF = "Li, Wong, Chen & Duvenaud 2020; Kidger, Foster, Li & Lyons 2021 (torchsde)"


def _torchsde():
    try:
        import torchsde
        from torchsde._core import base_sde, methods
    except ImportError as exc:   # pragma: no cover - torchsde is a dependency
        raise ImportError(f"the torchsde_* solvers need torchsde (pip install torchsde): {exc}")
    return torchsde, base_sde, methods


def noise_brownian(noise, batch: int, dim: int, dtype, device):
    """Our noise source as a torchsde ``BaseBrownian`` on s = -t, of shape [batch, dim].

    ``bm(sa, sb)`` is sqrt(sb - sa) noise(-sa, -sb) reshaped; ``return_U`` adds the space-time
    Levy area U = h (W/2 + H), H = sqrt(h/12) xi with xi from ``noise.levy_h`` (exact in law for
    one interval, but on a ``brownian`` path not the area of that path: see ``torchsde_srk``)."""
    torchsde, _, _ = _torchsde()

    class NoiseBrownian(torchsde.BaseBrownian):
        def __init__(self):
            self._shape, self._dtype, self._device = (batch, dim), dtype, torch.device(device)

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            if tb is None or return_A:
                raise ValueError("only increments (and U) over [ta, tb] are available")
            sa, sb = float(ta), float(tb)
            h = sb - sa
            w = noise(-sa, -sb).reshape(self._shape).to(self._dtype) * math.sqrt(h)
            if not return_U:
                return w
            xi = noise.levy_h(-sa, -sb).reshape(self._shape).to(self._dtype)
            return w, h * (0.5 * w + math.sqrt(h / 12.0) * xi)

        def __repr__(self):
            return f"NoiseBrownian({getattr(noise, 'mode', type(noise).__name__)})"

        @property
        def dtype(self):
            return self._dtype

        @property
        def device(self):
            return self._device

        @property
        def shape(self):
            return self._shape

        @property
        def levy_area_approximation(self):
            return "space-time"

    return NoiseBrownian()


class _View(torch.nn.Module):
    """``ReverseSDE.torchsde_view()`` with a chosen noise / SDE type, g cast to the state dtype,
    and the last drift evaluation memoised (torchsde's SRK evaluates f at the same stage twice)."""

    def __init__(self, view, noise_type: str, sde_type: str):
        super().__init__()
        self.view = view
        self.noise_type, self.sde_type = noise_type, sde_type
        self._last = None

    def f(self, s, y):
        last = self._last
        if last is not None and last[1] is y and float(last[0]) == float(s):
            return last[2]
        out = self.view.f(s, y).to(y.dtype)
        self._last = (s, y, out)
        return out

    def g(self, s, y):
        return self.view.g(s, y).to(y.dtype)

    def g_prod(self, s, y, v):
        return self.g(s, y) * v


@dataclass(frozen=True)
class _TorchsdeMethod(Solver):
    """Shared stepping: build torchsde's method object once per solve, then one ``step`` per
    grid interval (the denoise step into t = 0 is the base loop's)."""

    eta: float = 1.0

    kind = "sde"
    stochastic = True
    reference = _TORCHSDE_REF
    method: ClassVar[str] = ""
    noise_type: ClassVar[str] = "additive"
    sde_type: ClassVar[str] = "ito"

    def __post_init__(self):
        if not (isinstance(self.eta, (int, float)) and self.eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {self.eta!r}")

    def check(self, denoiser, grid):
        if self.eta > 0 and float(denoiser.schedule.alpha(grid.t_start)) == 0.0:
            return ("the reverse-SDE diffusion g(t) is infinite where alpha = 0 (t = "
                    f"{grid.t_start:g}); start from a finite sigma_max (e.g. grid 'karras')")
        return None

    def init_state(self, dynamics, x, grid):
        return {"solver": None}

    def _setup(self, dynamics, x, noise):
        _, base_sde, methods = _torchsde()
        view = _View(dynamics.torchsde_view(tuple(x.shape[1:])), self.noise_type, self.sde_type)
        sde = base_sde.ForwardSDE(view)
        bm = noise_brownian(noise, x.shape[0], x[0].numel(), x.dtype, x.device)
        cls = methods.select(method=self.method, sde_type=self.sde_type)
        return cls(sde=sde, bm=bm, dt=1.0, adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0,
                   options={})

    def step(self, dynamics, t0, t1, x, state, noise):
        shape = x.shape
        y = x.reshape(shape[0], -1)
        s0 = torch.tensor(-t0, dtype=torch.float64, device=x.device)
        s1 = torch.tensor(-t1, dtype=torch.float64, device=x.device)
        solver, extra = state["solver"], state.get("extra")
        if solver is None:
            solver = self._setup(dynamics, x, noise)
            extra = solver.init_extra_solver_state(s0, y)
        y1, extra = solver.step(s0, s1, y, extra)
        return y1.reshape(shape), {"solver": solver, "extra": extra}


@register_solver
@dataclass(frozen=True)
class TorchsdeEuler(_TorchsdeMethod):
    """torchsde ``euler`` (Euler-Maruyama) on the reverse SDE with ``eta``.  Ito; 1 NFE per step;
    strong order 1 for this additive-noise SDE, weak order 1.  The same numbers as
    ``euler_maruyama`` given the same noise source."""

    name = "torchsde_euler"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    method = "euler"


@register_solver
@dataclass(frozen=True)
class TorchsdeMilstein(_TorchsdeMethod):
    """torchsde ``milstein`` (Ito) on the reverse SDE with ``eta``.  1 NFE per step; strong and
    weak order 1.  With additive noise the Milstein correction g g' vanishes, so it is
    Euler-Maruyama here (torchsde skips the derivative for additive noise)."""

    name = "torchsde_milstein"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    method = "milstein"


@register_solver
@dataclass(frozen=True)
class TorchsdeSRK(_TorchsdeMethod):
    """torchsde ``srk``: the additive-noise stochastic Runge-Kutta method SRA1 (Roessler 2010),
    Ito, 2 NFE per step (torchsde evaluates the first stage's drift twice; the view memoises it).
    Weak order 2 for additive noise (Roessler); strong order 1.5 with the exact space-time Levy
    area of the path.  Our noise sources supply the area's exact law per interval but not as a
    functional of the tree's path (the virtual tree carries W only), so on a ``brownian`` path
    its strong order is 1 (declared); torchsde's ``BrownianInterval(levy_area_approximation=
    "space-time")`` would give 1.5 at about 10x the cost of our tree."""

    name = "torchsde_srk"
    strong_order = 1.0
    weak_order = 2.0
    stages = 2
    method = "srk"


@register_solver
@dataclass(frozen=True)
class TorchsdeReversibleHeun(_TorchsdeMethod):
    """torchsde ``reversible_heun`` (Kidger et al. 2021), Stratonovich (= Ito here: additive
    noise).  1 NFE per step plus 1 at the start (its extra state holds the drift at the previous
    point); strong order 1 for additive noise, weak order 1.

    Unstable on the reverse SDE of EDM models (issue 17; results/findings_reversible_heun.md,
    tests/test_reversible_heun.py).  This is the method, not our use of it: the wrapper equals
    ``torchsde.sdeint(..., method="reversible_heun")`` bit for bit on the same Brownian path.
    The method is algebraically reversible, so one step on dy/ds = lambda y maps its state
    (y, z) by a matrix of determinant -1: it cannot contract both modes.  With m = lambda h the
    roots are m +- sqrt(1 + m^2); for a contracting drift (m < 0, any size) the parasitic one has
    modulus |m| + sqrt(1 + m^2) > 1, the inverse of the physical one, so that mode grows over a
    solve by ~1/C, C = the exact contraction of the SDE, whatever the step count (its stability
    region is the segment [-i, i] of the imaginary axis).  The reverse SDE contracts strongly
    (eta = 1, EDM: rate 2t/(v + t^2) along a data direction of variance v): 1/C = 1.3e5 for
    v = 0.05 (gmm64's smallest), 6e6 for v = 1e-3; 3e3 / 1.4e5 on VP, 1.6e3 / 8e4 on rf.  Noise
    (the z update uses g0 dW, the y update (g0 + g1) dW / 2) and the curvature of the solution
    excite the mode every step, so on gmm64 (EDM, karras, brownian) the strong error is 4e4 at 32
    steps and 1.6e3 at 1024 (falling ~1/N) against a data scale of 0.6.  The PF-ODE (eta = 0,
    1/C = 358, its EDM trajectories nearly straight) converges at order 2 (6e-3 at 32 steps).
    torchsde's own ``sdeint`` on dy = -2y/(1 - s) ds over [0, 0.99] (exact 1e-4) gives -6.2 in
    12 steps and 3.8e-5 in 1024.  Use it for the PF-ODE or mildly contracting SDEs only.  It
    also amplifies rounding: batch-size-dependent last bits of the model output become ~1e-13
    relative differences between batch sizes."""

    name = "torchsde_reversible_heun"
    strong_order = 1.0
    weak_order = 1.0
    stages = 1
    method = "reversible_heun"
    noise_type = "diagonal"
    sde_type = "stratonovich"
    reference = "Kidger, Foster, Li & Lyons 2021, Efficient and Accurate Gradients for Neural SDEs"

    def declared_nfe(self, grid):
        n = super().declared_nfe(grid)
        return None if n is None else n + 1
