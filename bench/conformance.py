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

    def format(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"  [{mark}] {self.name:<12} {self.detail}"


@dataclass
class ConformanceReport:
    solver: str
    params: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def format(self) -> str:
        return "\n".join([self.header()] + [c.format() for c in self.checks] + [self.footer()])

    def header(self) -> str:
        return f"check-solver {self.solver} {self.params}"

    def footer(self) -> str:
        return "result: " + ("conformant" if self.passed else "NOT conformant")


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


class _Checks:
    """Collects the checks of a report and hands each to ``on_check`` as it finishes; a check
    whose code raises (a plugin's ``step`` throwing) is a FAIL naming the exception, and the
    remaining checks still run."""

    def __init__(self, rep: ConformanceReport, on_check):
        self.rep, self.on_check = rep, on_check

    def add(self, check: Check) -> None:
        self.rep.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)

    def guard(self, name: str, fn) -> None:
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:200]
            self.add(Check(name, False, f"raised {type(exc).__name__}: {text}"))


def check_solver(name: str, params: dict | None = None, model: str = "gmm64",
                 on_check=None) -> ConformanceReport:
    """Run the conformance checks of solver ``name``; ``on_check(check)`` is called as each one
    finishes (the CLI prints it at once)."""
    params = dict(params or {})
    solver = get_solver(name, **params)
    rep = ConformanceReport(name, solver.params())
    den = load_model(model)
    cls = type(solver)
    out = _Checks(rep, on_check)

    # --- order -------------------------------------------------------------------------------
    def order():
        declared = solver.order if cls.kind == "ode" else None   # per instance (solver_order)
        if solver.stochastic or declared is None or solver.adaptive:
            why = ("stochastic: strong/weak orders are measured by the SDE study"
                   if solver.stochastic
                   else "adaptive: tolerance, not steps, is its budget" if solver.adaptive
                   else "no declared order")
            out.add(Check("order", None, why))
            return
        p, nfes, errs = measure_order(solver, den, declared)
        ok = p is not None and abs(p - declared) <= ORDER_TOLERANCE
        pts = ", ".join(f"{n}:{e:.1e}" for n, e in zip(nfes, errs))
        out.add(Check("order", ok, f"declared {declared:g}, measured "
                      f"{'-' if p is None else f'{p:.2f}'} (NFE:err {pts})"))

    out.guard("order", order)

    # --- NFE honesty ---------------------------------------------------------------------------
    seeds = sample_seeds(0, 4)
    for final in ("zero", "t_min"):
        def nfe(final=final):
            g = make_grid("karras", den.schedule, 10, final=final)
            _, sol = _run(solver, den, g, seeds)
            expected = solver.declared_nfe(g)
            if expected is None:
                out.add(Check(f"nfe/{final}", None, f"counted {sol.nfe} (adaptive)"))
            else:
                out.add(Check(f"nfe/{final}", sol.nfe == expected,
                              f"counted {sol.nfe}, declared {expected} "
                              f"({cls.stages} per step, 10 steps)"))

        out.guard(f"nfe/{final}", nfe)

    # --- determinism, batch invariance, shape ---------------------------------------------------
    g = make_grid("karras", den.schedule, 12)
    first = {}

    def determinism():
        _, a = _run(solver, den, g, seeds)
        _, b = _run(solver, den, g, seeds)
        first["a"] = a
        out.add(Check("determinism", bool(torch.equal(a.x, b.x)),
                      "same seed, same result" if torch.equal(a.x, b.x)
                      else f"max diff {float((a.x - b.x).abs().max()):.2e}"))

    def batch():
        a = first.get("a") or _run(solver, den, g, seeds)[1]
        singles = torch.cat([_run(solver, den, g, [s])[1].x for s in seeds])
        d = float((singles - a.x).abs().max())
        if solver.adaptive:
            # step-size control takes one error norm over the whole batch
            out.add(Check("batch", None, f"adaptive: the error norm spans the batch, so "
                          f"results depend on it (max diff {d:.1e})"))
        else:
            scale = max(1.0, float(a.x.abs().max()))       # relative: values may be large
            out.add(Check("batch", d <= 1e-9 * scale, f"batch of {len(seeds)} vs one by "
                          f"one: max diff {d:.1e} (scale {scale:.1e})"))

    def shape():
        a = first.get("a") or _run(solver, den, g, seeds)[1]
        flat = GMMDenoiser(den.mixture, den.schedule, (den.mixture.dim,))
        _, f = _run(solver, flat, g, seeds)
        d = float((f.x.reshape(a.x.shape) - a.x).abs().max())
        out.add(Check("shape", d <= 1e-9 and a.x.shape == (4, 1, 8, 8),
                      f"(B,1,8,8) vs (B,64): max diff {d:.1e}"))

    out.guard("determinism", determinism)
    out.guard("batch", batch)
    out.guard("shape", shape)

    # --- flow model from t = 1 -------------------------------------------------------------------
    def flow():
        rf = load_model(model + "-rf") if not model.endswith("-rf") else den
        gf = make_grid("uniform", rf.schedule, 12)
        reason = solver.check(rf, gf)
        if reason:
            out.add(Check("flow", None, f"declines t = 1 on rf: {reason}"))
        else:
            _, sol = _run(solver, rf, gf, seeds)
            out.add(Check("flow", sol.status == "ok", f"rf from t = 1: status {sol.status}"))

    out.guard("flow", flow)
    return rep
