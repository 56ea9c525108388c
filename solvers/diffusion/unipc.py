"""UniPC (Zhao, Bai, Rao, Zhou & Lu 2023): the unified predictor-corrector multistep solver, in data
prediction (x0_hat) with lambda = log(alpha / sigma) and h = lambda_1 - lambda_0.

Predictor UniP-p from t0 to t1 (model output m_0 at t0, m_k at the earlier grid points s_k):

    x_1 = (sigma_1/sigma_0) x_0 + alpha_1 (1 - e^{-h}) m_0 - alpha_1 B(h) sum_k rho_k D_k,
    D_k = (m_k - m_0) / r_k,   r_k = (lambda(s_k) - lambda_0) / h,

where rho solves sum_k r_k^(i-1) rho_k = i! (-h) phi_{i+1}(-h) / B(h), i = 1..p-1, with
phi_1(z) = (e^z - 1)/z, phi_{j+1}(z) = (phi_j(z) - 1/j!)/z, and B(h) = -h ("bh1") or
e^{-h} - 1 ("bh2").  Corrector UniC-p: the same update of the previous step, redone from its
corrected start with the new output m_1 -- evaluated at the predicted x_1, so no extra NFE -- as
one more node (r = 1); it raises the order by one (paper Thm. 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from samplerbench.solvers.base import Solver
from samplerbench.solvers.diffusion import fused
from samplerbench.solvers.diffusion.fused import lincomb, prime
from samplerbench.solvers.registry import register_solver

_REFERENCE = ("Zhao, Bai, Rao, Zhou & Lu 2023, UniPC: A Unified Predictor-Corrector Framework for "
              "Fast Sampling of Diffusion Models; diffusers UniPCMultistepScheduler")


def _b_vector(h: float, n: int, variant: str) -> tuple[float, list[float]]:
    """B(h) and the right-hand sides b_i = i! hh phi_{i+1}(hh) / B(h), i = 1..n, hh = -h (data
    prediction), by the recursion of the reference implementation."""
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1.0
    B = hh if variant == "bh1" else math.expm1(hh)
    b, fact = [], 1.0
    for i in range(1, n + 1):
        b.append(h_phi_k * fact / B)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return B, b


def _b_of_h(h: float, variant: str) -> float:
    """B(h) alone (what :func:`_b_vector` returns first), for the orders with a fixed rho."""
    return -h if variant == "bh1" else math.expm1(-h)


def _finite(points):
    """History entries at a finite lambda.  An entry at lambda = -inf (alpha = 0: rectified flow at
    t = 1) has r_k = inf and D_k = 0; dropping it is the limit of the formulas."""
    return [(l, m) for (l, m) in points if math.isfinite(l)]


@dataclass(frozen=True)
class _UniPC(Solver):
    """Multistep UniPC-p, data prediction; subclasses fix B(h).

    ODE, 1 NFE per step, order ``solver_order + 1`` (UniP-p is order p, the corrector adds one;
    the final step's prediction is not corrected -- that would cost an NFE -- which keeps the
    global order).  Warm-up: step i uses order min(p, i + 1).

    Equals diffusers' ``UniPCMultistepScheduler`` (predict_x0=True, disable_corrector=[],
    the default final_sigmas_type="zero") on the same grid: its last step into sigma = 0 is the
    denoise step here (for bh1 diffusers' own last step returns NaN, B(h) = -h = -inf times a zero
    correction; the denoise step is what it returns for bh2).  As in the reference implementation, rho = 1/2 for the UniP-2 predictor
    and for the UniC-1 corrector (the h -> 0 limit of the solved coefficient); other orders solve
    the linear system.

    ``lower_order_final`` (default True, diffusers' rule) caps the order of step i at the number of
    grid intervals left, the denoise step counting as one, on grids that end at t = 0.  On
    ``final="t_min"`` grids it does nothing: diffusers with final_sigmas_type="sigma_min" would take
    the last step at first order and uncorrected, which caps the global order at 2.

    From alpha = 0 (lambda = -inf, rectified flow at t = 1) the first step is the DDIM step; history
    at lambda = -inf is dropped (the limit r_k -> inf), and the corrector of the step that started
    there is skipped (with the reference's rho = 1/2, bh1's B(h) = -h has no finite limit)."""

    solver_order: int = 2
    lower_order_final: bool = True

    variant: ClassVar[str] = "bh2"
    kind = "ode"
    stages = 1
    reference = _REFERENCE

    def __post_init__(self):
        if type(self.solver_order) is not int or self.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {self.solver_order!r}")
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(
                f"lower_order_final must be true or false, got {self.lower_order_final!r}")
        # the declared convergence order follows the parameter (UniPC-p has order p + 1)
        object.__setattr__(self, "order", float(self.solver_order + 1))

    def init_state(self, dynamics, x, grid):
        # hist: (lambda, x0_hat) of earlier grid points, newest first; base: the previous step's
        # start (t, lambda, corrected x, predictor order) for the corrector; lam: lambda of each
        # grid time (the state is this solve's own and is updated in place)
        ts = prime(dynamics, grid)
        return {"i": 0, "n": grid.steps, "final": grid.final, "hist": (), "base": None,
                "lam": {t: fused.lam(dynamics, t) for t in ts}}

    def step(self, dynamics, t0, t1, x, state, noise):
        m0 = dynamics.denoise(t0, x)
        lams = state.get("lam") or {}
        l0, l1 = lams.get(t0), lams.get(t1)
        if l0 is None or l1 is None:
            l0, l1 = fused.lam(dynamics, t0), fused.lam(dynamics, t1)
        hist = state["hist"]
        base, state["base"] = state["base"], None
        if base is not None:
            x = self._correct(dynamics, base, hist, t0, l0, x, m0)
        i = state["i"]
        order = min(self.solver_order, i + 1)
        if self.lower_order_final and state["final"] == "zero":
            order = min(order, state["n"] - i)
        # drop what the predictor does not use (the previous start, the oldest output) before it
        # allocates its result: fewer live state-sized tensors
        del base
        state["hist"] = ((l0, m0),) + hist[: self.solver_order - 1]
        hist = hist[: order - 1]
        x_new = self._predict(dynamics, x, t0, l0, m0, t1, l1, hist, order)
        state["i"] = i + 1
        state["base"] = (t0, l0, x, order)
        return x_new, state

    # ------------------------------------------------------------------------------------------
    # Predictor and corrector are linear in (x, model outputs) with per-step scalar weights: each
    # is one linear combination, one pass over the state per term.
    def _predict(self, dynamics, x, t0, l0, m0, t1, l1, hist, order):
        """UniP-order from (t0, x, m0) to t1 with the earlier outputs in ``hist``."""
        a1, s1, _, _ = dynamics.scalars(t1)
        s0 = dynamics.scalars(t0)[1]
        h = l1 - l0
        c_x, c_m0 = s1 / s0, a1 * -math.expm1(-h)
        pts = _finite(hist[: order - 1])
        if not pts:
            return lincomb((c_x, x), (c_m0, m0))
        rks = [(lk - l0) / h for lk, _ in pts]
        if order == 2:
            B, rhos = _b_of_h(h, self.variant), [0.5]
        else:
            B, b = _b_vector(h, len(pts), self.variant)
            rhos = _solve([[rk**p for rk in rks] for p in range(len(pts))], b)
        # - alpha_1 B sum_k rho_k (m_k - m0) / r_k
        terms = []
        for rho, rk, (_, mk) in zip(rhos, rks, pts):
            w = (a1 * B) * (rho / rk)
            c_m0 += w
            terms.append((-w, mk))
        return lincomb((c_x, x), (c_m0, m0), *terms)

    def _correct(self, dynamics, base, hist, t, l, x, m_t):  # noqa: E741
        """UniC: redo the previous step from its corrected start with m_t (the output at the
        predicted x) as an extra node.  Returns x unchanged where the step started at
        lambda = -inf."""
        t_s, l_s, x_s, order = base
        h = l - l_s
        if not math.isfinite(h):
            return x
        a, s, _, _ = dynamics.scalars(t)
        s_s = dynamics.scalars(t_s)[1]
        m_s = hist[0][1]
        pts = _finite(hist[1:order])
        rks = [(lk - l_s) / h for lk, _ in pts] + [1.0]
        if order == 1:
            B, rhos = _b_of_h(h, self.variant), [0.5]
        else:
            B, b = _b_vector(h, len(rks), self.variant)
            rhos = _solve([[rk**p for rk in rks] for p in range(len(rks))], b)
        # (s/s_s) x_s + a (1 - e^{-h}) m_s - a B [rho_last (m_t - m_s) + sum_k rho_k (m_k - m_s)/r_k]
        aB = a * B
        c_ms = a * -math.expm1(-h) + aB * rhos[-1]
        terms = [(-aB * rhos[-1], m_t)]
        for rho, rk, (_, mk) in zip(rhos[:-1], rks, pts):
            w = aB * (rho / rk)
            c_ms += w
            terms.append((-w, mk))
        return lincomb((s / s_s, x_s), (c_ms, m_s), *terms)


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """Solve the small dense system A y = b (Cramer's rule for 2 x 2, else Gaussian elimination
    with partial pivoting; the systems here are at most 4 x 4, where numpy's per-call overhead
    would dominate)."""
    n = len(b)
    if n == 2:
        # Cramer's rule (here A = [[1, 1], [r, 1]] with r < 0: det = 1 - r > 1)
        (a00, a01), (a10, a11) = A
        det = a00 * a11 - a01 * a10
        if det == 0.0:
            raise ValueError("singular UniPC coefficient system (repeated nodes)")
        return [(b[0] * a11 - a01 * b[1]) / det, (a00 * b[1] - b[0] * a10) / det]
    M = [list(map(float, row)) + [float(bi)] for row, bi in zip(A, b)]
    for k in range(n):
        p = max(range(k, n), key=lambda r: abs(M[r][k]))
        if M[p][k] == 0.0:
            raise ValueError("singular UniPC coefficient system (repeated nodes)")
        if p != k:
            M[k], M[p] = M[p], M[k]
        pivot = M[k]
        for r in range(k + 1, n):
            f = M[r][k] / pivot[k]
            if f != 0.0:
                row = M[r]
                for c in range(k, n + 1):
                    row[c] -= f * pivot[c]
    y = [0.0] * n
    for k in range(n - 1, -1, -1):
        acc = M[k][n] - sum(M[k][c] * y[c] for c in range(k + 1, n))
        y[k] = acc / M[k][k]
    return y


@register_solver
@dataclass(frozen=True)
class UniPCBh1(_UniPC):
    __doc__ = ("UniPC with B(h) = h (``bh1``; the paper's choice for unconditional sampling).\n\n"
               + (_UniPC.__doc__ or ""))

    name = "unipc_bh1"
    variant = "bh1"
    order = 3.0


@register_solver
@dataclass(frozen=True)
class UniPCBh2(_UniPC):
    __doc__ = ("UniPC with B(h) = e^h - 1 (``bh2``; diffusers' default, recommended for guided "
               "sampling).\n\n" + (_UniPC.__doc__ or ""))

    name = "unipc_bh2"
    variant = "bh2"
    order = 3.0
