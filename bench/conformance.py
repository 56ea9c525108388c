"""``samplerbench check-solver NAME``: what a plugin author runs before publishing a solver.

Checks, on an analytic Gaussian mixture (exact denoiser, float64):
  order        measured convergence order vs the declared one (ODE solvers; final="t_min",
               error against the dopri8 reference, steps doubled until the local slope settles)
  nfe          NFE counted by the wrapper vs ``stages`` per step (+1 for the denoise step)
  determinism  two solves with the same seed give identical results
  batch        a sample's result does not depend on the batch it is solved in
  shape        image-shaped data (B, 1, 8, 8) gives the same result as the flat (B, 64) view
  flow         runs on a rectified-flow model from t = 1 (alpha = 0) without NaN
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from samplerbench.bench.metrics import fit_order, per_sample_rms
from samplerbench.models.gmm import GMMDenoiser
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid, make_noise
from samplerbench.solvers.classical.adaptive import reference_solve
from samplerbench.solvers.noise import sample_seeds

ORDER_TOLERANCE = 0.35


@dataclass
class Check:
    name: str
    passed: bool | None          # None: not applicable
    detail: str


@dataclass
class ConformanceReport:
    solver: str
    params: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def format(self) -> str:
        lines = [f"check-solver {self.solver} {self.params}"]
        for c in self.checks:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[c.passed]
            lines.append(f"  [{mark}] {c.name:<12} {c.detail}")
        lines.append("result: " + ("conformant" if self.passed else "NOT conformant"))
        return "\n".join(lines)


def _run(solver, model, grid, seeds, noise_mode="brownian"):
    x = initial_noise(seeds, model.data_shape) * float(model.schedule.sigma(grid.t_start))
    noise = (make_noise(noise_mode, seeds, model.data_shape, grid) if solver.stochastic else None)
    return x, solver.solve(solver.make_dynamics(model), x, grid, noise)


def measure_order(solver, model, declared: float, n_samples: int = 8, start: int = 16,
                  max_steps: int = 2048, grid: str = "karras"):
    """Double the steps (final="t_min") until the last two local slopes of log err vs log NFE
    both lie within ORDER_TOLERANCE of ``declared`` (the asymptotic range is reached), the error
    reaches the reference floor, or ``max_steps``; return (order fitted over the last three
    points, nfe list, err list).  A solver whose order is wrong never settles and fails."""
    seeds = sample_seeds(0, n_samples)
    g0 = make_grid(grid, model.schedule, start, final="t_min")
    x = initial_noise(seeds, model.data_shape) * float(model.schedule.sigma(g0.t_start))
    ref = reference_solve(get_solver("dopri8").make_dynamics(model), x, g0, 1e-12, 1e-12).x
    nfes, errs = [], []
    steps = start
    while steps <= max_steps:
        g = make_grid(grid, model.schedule, steps, final="t_min")
        sol = solver.solve(solver.make_dynamics(model), x, g)
        err = float(per_sample_rms(sol.x, ref).mean())
        if not math.isfinite(err) or err < 1e-10:     # at the reference floor: stop
            break
        nfes.append(sol.nfe)
        errs.append(err)
        if len(errs) >= 3:
            local = [fit_order(nfes[i:i + 2], errs[i:i + 2], n_points=2) for i in (-3, -2)]
            if all(p is not None and abs(p - declared) <= ORDER_TOLERANCE for p in local):
                break
        steps *= 2
    return fit_order(nfes, errs, n_points=3), nfes, errs


def check_solver(name: str, params: dict | None = None, model: str = "gmm64") -> ConformanceReport:
    params = dict(params or {})
    solver = get_solver(name, **params)
    rep = ConformanceReport(name, solver.params())
    den = load_model(model)
    cls = type(solver)

    # --- order -------------------------------------------------------------------------------
    declared = solver.order if cls.kind == "ode" else None   # per instance (solver_order)
    if solver.stochastic or declared is None or solver.adaptive:
        why = ("stochastic: strong/weak orders are measured by the SDE study" if solver.stochastic
               else "adaptive: tolerance, not steps, is its budget" if solver.adaptive
               else "no declared order")
        rep.checks.append(Check("order", None, why))
    else:
        p, nfes, errs = measure_order(solver, den, declared)
        ok = p is not None and abs(p - declared) <= ORDER_TOLERANCE
        pts = ", ".join(f"{n}:{e:.1e}" for n, e in zip(nfes, errs))
        rep.checks.append(Check("order", ok, f"declared {declared:g}, measured "
                                f"{'-' if p is None else f'{p:.2f}'} (NFE:err {pts})"))

    # --- NFE honesty ---------------------------------------------------------------------------
    seeds = sample_seeds(0, 4)
    for final in ("zero", "t_min"):
        g = make_grid("karras", den.schedule, 10, final=final)
        _, sol = _run(solver, den, g, seeds)
        expected = solver.declared_nfe(g)
        if expected is None:
            rep.checks.append(Check(f"nfe/{final}", None, f"counted {sol.nfe} (adaptive)"))
        else:
            rep.checks.append(Check(f"nfe/{final}", sol.nfe == expected,
                                    f"counted {sol.nfe}, declared {expected} "
                                    f"({cls.stages} per step, 10 steps)"))

    # --- determinism, batch invariance, shape ---------------------------------------------------
    g = make_grid("karras", den.schedule, 12)
    _, a = _run(solver, den, g, seeds)
    _, b = _run(solver, den, g, seeds)
    rep.checks.append(Check("determinism", bool(torch.equal(a.x, b.x)),
                            "same seed, same result" if torch.equal(a.x, b.x)
                            else f"max diff {float((a.x - b.x).abs().max()):.2e}"))
    singles = torch.cat([_run(solver, den, g, [s])[1].x for s in seeds])
    d = float((singles - a.x).abs().max())
    if solver.adaptive:
        # step-size control takes one error norm over the whole batch
        rep.checks.append(Check("batch", None, f"adaptive: the error norm spans the batch, so "
                                f"results depend on it (max diff {d:.1e})"))
    else:
        scale = max(1.0, float(a.x.abs().max()))       # relative: values may be large
        rep.checks.append(Check("batch", d <= 1e-9 * scale, f"batch of {len(seeds)} vs one by "
                                f"one: max diff {d:.1e} (scale {scale:.1e})"))
    flat = GMMDenoiser(den.mixture, den.schedule, (den.mixture.dim,))
    _, f = _run(solver, flat, g, seeds)
    d = float((f.x.reshape(a.x.shape) - a.x).abs().max())
    rep.checks.append(Check("shape", d <= 1e-9 and a.x.shape == (4, 1, 8, 8),
                            f"(B,1,8,8) vs (B,64): max diff {d:.1e}"))

    # --- flow model from t = 1 -------------------------------------------------------------------
    rf = load_model(model + "-rf") if not model.endswith("-rf") else den
    g = make_grid("uniform", rf.schedule, 12)
    reason = solver.check(rf, g)
    if reason:
        rep.checks.append(Check("flow", None, f"declines t = 1 on rf: {reason}"))
    else:
        _, sol = _run(solver, rf, g, seeds)
        rep.checks.append(Check("flow", sol.status == "ok",
                                f"rf from t = 1: status {sol.status}"))
    return rep
