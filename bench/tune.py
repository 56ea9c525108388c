"""``samplerbench tune-grid``: optimise the time points of an N-step grid for one model and solver.

What is optimised.  The N positive points of a ``final="zero"`` grid (then t = 0, the denoise
step): the first and last stay at the start grid's ends (karras, or the model's recommended grid:
t_start at sigma_max, t_end at t_min), the N - 2 interior points move.  They are parametrised in
u = log(sigma/alpha) by softmax increments,

    u_i = u_start - (u_start - u_end) * sum_{j < i} w_j,     w = softmax([theta_1..theta_{N-2}, 0]),

so every theta in R^{N-2} gives a strictly decreasing grid with the ends fixed (no constraint for
the optimiser), and the start grid is theta_j = log(w_j / w_last) of its own increments.  With
``fix_ends=False`` the last positive point moves too, inside (t_min, the point before it):
u_end = u_min + (u_start - u_min) * sigmoid(phi), one more parameter; the start never moves (the
initial noise x_init = sigma(t_start) z lives there).

Objectives (``objective``), each a mean over the calibration seeds:

* ``reference`` -- err_rms of the final sample against the float64 high-accuracy reference of the
  same ODE from the same x_init (dopri8 at rtol = atol = 1e-10 over the same interval with the same
  denoise step: ``reference_solve``, as the runner).  With fixed ends the reference does not
  depend on the interior points, so it is solved once per seed set; with free ends it is the one
  of the start grid's interval (the model's t_max -> t_min, then denoise), which every candidate
  approximates.
* ``refine`` -- a proxy for trained networks where that reference on many seeds costs too much:
  the RMS distance between the N-step solve and the same solver on the same grid with every
  interval halved in log(sigma/alpha) (2N - 1 steps), from the same x_init (with a free end, the
  finer solve goes on down to t_min: stopping early counts as error).  For a solver of order
  p it estimates (1 - 2^-p) times the N-step error (Richardson), as Align Your Steps and GITS
  compare a coarse schedule against finer solves.  It costs about 3N model calls per evaluation
  and no reference; the reference objective costs N calls per evaluation plus one dopri8 solve
  (~1000 calls) per seed set.

Optimiser: ``scipy.optimize.minimize`` with Nelder-Mead (derivative-free: solvers need not be
differentiable in the grid) on log(objective), from the start grid, initial simplex steps of 0.5
in theta, then one restart from the best point (a fresh simplex escapes Nelder-Mead's collapses);
``optimizer="powell"`` uses Powell's method instead.  The tuned grid is the best point evaluated,
never worse than the start grid on the calibration seeds.

Held-out evaluation: seeds ``seed + seeds_cal ...`` (disjoint from the calibration seeds
``seed ... seed + seeds_cal - 1``): err_rms of the start and tuned grids, and the standard error
of their paired difference (delete-one-block jackknife over seed blocks, ``bench/stats.py``).

The result is a grid spec ``{"name": "list", "values": [...], "space": "t", "metadata": {...}}``
usable as ``--grid @FILE.json`` (the reader ignores ``metadata``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from samplerbench.bench.metrics import per_sample_rms
from samplerbench.bench.stats import default_blocks, jackknife, paired
from samplerbench.models.errors import UserError
from samplerbench.models.zoo import is_analytic, load_model
from samplerbench.solvers import get_solver, initial_noise
from samplerbench.solvers.classical.adaptive import reference_solve
from samplerbench.solvers.grids import AUTO, make_grid, resolve_grid
from samplerbench.solvers.noise import sample_seeds

OBJECTIVES = ("auto", "reference", "refine")
OPTIMIZERS = ("nelder-mead", "powell")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
REF_TOL = 1e-10                 # the runner's reference tolerance (spec ref_rtol / ref_atol)
BAD = 50.0                      # log-objective of a grid whose solve failed (err ~ e^50)
FREE_END_INIT = 1e-3            # free end: sigmoid(phi) of the start point when it sits on t_min


# --------------------------------------------------------------------------------------------
# the parametrisation: theta in R^k <-> strictly decreasing grid points
# --------------------------------------------------------------------------------------------

class GridParams:
    """theta <-> the N positive points of a grid (module docstring).  ``points(theta)`` returns
    float64 times, strictly decreasing up to float rounding (callers check)."""

    def __init__(self, schedule, t_start: float, t_end: float, n: int, fix_ends: bool = True,
                 t_floor: float | None = None):
        self.schedule, self.n, self.fix_ends = schedule, int(n), bool(fix_ends)
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.u_start = self._u(t_start)
        self.u_end = self._u(t_end)
        self.t_floor = float(schedule.t_min if t_floor is None else t_floor)
        self.u_floor = self._u(self.t_floor)

    def _u(self, t) -> float:
        return math.log(float(self.schedule.ratio(torch.tensor(float(t), dtype=torch.float64))))

    @property
    def dim(self) -> int:
        return self.n - 2 + (0 if self.fix_ends else 1)

    def points(self, theta) -> torch.Tensor:
        theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        k = self.n - 2
        logits = torch.cat([theta[:k], theta.new_zeros(1)])
        w = torch.softmax(logits, 0)
        if self.fix_ends:
            u_end = self.u_end
        else:
            frac = float(torch.sigmoid(theta[k]))
            u_end = self.u_floor + (self.u_start - self.u_floor) * frac
        u = self.u_start - (self.u_start - u_end) * torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
        t = self.schedule.t_from_ratio(torch.exp(u)).to(torch.float64)
        t[0] = self.t_start                     # exact ends (no ratio round trip)
        if self.fix_ends:
            t[-1] = self.t_end
        return t

    def theta(self, t: torch.Tensor) -> np.ndarray:
        """The parameters of the grid points ``t`` (N positive, decreasing, same start)."""
        u = torch.log(self.schedule.ratio(t.to(torch.float64)))
        d = u[:-1] - u[1:]
        w = d / d.sum()
        th = torch.log(w[:-1]) - torch.log(w[-1])
        if not self.fix_ends:
            frac = (float(u[-1]) - self.u_floor) / (self.u_start - self.u_floor)
            frac = min(max(frac, FREE_END_INIT), 1 - FREE_END_INIT)
            th = torch.cat([th, th.new_tensor([math.log(frac / (1 - frac))])])
        return th.numpy()


# --------------------------------------------------------------------------------------------
# objectives
# --------------------------------------------------------------------------------------------

def _refined(points: torch.Tensor, schedule, t_end: float | None = None) -> torch.Tensor:
    """The grid points with every interval halved in log(sigma/alpha); with ``t_end`` below the
    last point (a free end), continued down to ``t_end``, so that stopping early is an error."""
    u = torch.log(schedule.ratio(points))
    mid = schedule.t_from_ratio(torch.exp(0.5 * (u[:-1] + u[1:]))).to(torch.float64)
    out = torch.empty(2 * points.numel() - 1, dtype=torch.float64)
    out[0::2], out[1::2] = points, mid
    if t_end is not None and t_end < float(points[-1]):
        out = torch.cat([out, out.new_tensor([t_end])])
    return out


_REFS: dict = {}               # (model, seeds, dtype, interval) -> (x_init, x_ref), this process


def reference_endpoint(model: str, den, grid, first: int, count: int, dtype: str = "float64",
                       device="cpu", need_ref: bool = True):
    """(x_init, x_ref) of seeds ``first .. first + count - 1`` on ``grid``'s interval:
    x_init = sigma(t_start) z (the harness's per-sample draws) and x_ref the float64 dopri8
    reference endpoint (rtol = atol = 1e-10, with the denoise step of ``final="zero"``), as the
    runner computes it; x_ref is None when not ``need_ref``.  Cached per process: the reference
    depends only on the seeds and the interval, not on the solver or the interior points."""
    key = (model, int(first), int(count), dtype, str(device), grid.t_start, grid.t_end,
           grid.final)
    hit = _REFS.get(key)
    if hit is None or (need_ref and hit[1] is None):
        z = initial_noise(sample_seeds(first, count), den.data_shape, dtype=DTYPES[dtype],
                          device=device)
        x_init = z * float(den.schedule.sigma(grid.t_start))
        x_ref = None
        if need_ref:
            sol = reference_solve(get_solver("dopri8").make_dynamics(den), x_init.double().cpu(),
                                  grid, rtol=REF_TOL, atol=REF_TOL)
            if sol.status != "ok":
                raise RuntimeError(f"reference solution failed: {sol.message}")
            x_ref = sol.x
        while len(_REFS) >= 64:
            _REFS.pop(next(iter(_REFS)))
        hit = _REFS[key] = (x_init, x_ref)
    return hit


class _Problem:
    """One model, solver and seed set: the per-seed objective of a grid's points."""

    def __init__(self, den, solver, objective: str, x_init: torch.Tensor,
                 x_ref: torch.Tensor | None, t_end: float):
        self.den, self.solver, self.objective = den, solver, objective
        self.t_end = t_end                      # the reference interval's end (the start grid's)
        self.dyn = solver.make_dynamics(den)
        self.x_init, self.x_ref = x_init, x_ref
        self.evals = 0
        self.nfe = 0

    def _solve(self, points: torch.Tensor):
        grid = make_grid("list", self.den.schedule, points.numel(), final="zero",
                         values=points.tolist(), space="t")
        sol = self.solver.solve(self.dyn, self.x_init.clone(), grid)
        self.nfe += int(sol.nfe)
        if sol.status != "ok" or not torch.isfinite(sol.x).all():
            return None
        return sol.x

    def per_seed(self, points: torch.Tensor, objective: str | None = None) -> torch.Tensor | None:
        """Per-seed objective (float64 [n]) or None when the grid is invalid or the solve fails."""
        objective = objective or self.objective
        if not (points[1:] < points[:-1]).all() or not torch.isfinite(points).all():
            return None
        self.evals += 1
        try:
            x = self._solve(points)
            if x is None:
                return None
            if objective == "reference":
                return per_sample_rms(x, self.x_ref.to(x.device))
            x2 = self._solve(_refined(points, self.den.schedule, self.t_end))
            return None if x2 is None else per_sample_rms(x, x2)
        except UserError:          # e.g. points that collapse in float rounding
            return None

    def value(self, points, objective=None) -> float:
        e = self.per_seed(points, objective)
        return math.inf if e is None else float(e.mean())


def _log(v: float) -> float:
    """log of an objective value; a failed solve (inf) is a large finite penalty."""
    if not math.isfinite(v):
        return BAD
    return math.log(v) if v > 0 else -BAD


def _paired_summary(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean per-seed values of a and b, their jackknife standard errors over seed blocks, and the
    paired test of a - b (``bench/stats.py``)."""
    n = a.numel()
    blocks = default_blocks(n)

    ja = jackknife(lambda x: float(x.mean()), a, blocks)
    jb = jackknife(lambda x: float(x.mean()), b, blocks)
    out = {"start": ja["value"], "start_se": ja["se"], "tuned": jb["value"], "tuned_se": jb["se"],
           "blocks": blocks, "n": n}
    if blocks:
        test = paired(jb["value"], jb["blocks"], ja["value"], ja["blocks"])
        out.update(diff=test["diff"], diff_se=test["se"], p=test["p"])
    else:
        out.update(diff=jb["value"] - ja["value"], diff_se=None, p=None)
    return out


# --------------------------------------------------------------------------------------------
# the library call
# --------------------------------------------------------------------------------------------

def _positive_int(field, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise UserError(field, v, hint=f"an integer >= {lo}")
    return v


def check_tune_args(model: str, solver: str, steps: int | None, nfe: int | None,
                    seeds_cal: int, seeds_eval: int, fix_ends: bool, objective: str,
                    optimizer: str, solver_opts: dict | None, init: str, init_params: dict | None,
                    dtype: str | None, maxfev: int | None, den=None):
    """Validate everything that needs no solve; returns (den, solver, start grid, steps).
    ``den``: the model already loaded (else loaded from ``model``)."""
    if objective not in OBJECTIVES:
        raise UserError("--objective", objective, OBJECTIVES)
    if optimizer not in OPTIMIZERS:
        raise UserError("--optimizer", optimizer, OPTIMIZERS)
    if dtype is not None and dtype not in DTYPES:
        raise UserError("--dtype", dtype, sorted(DTYPES))
    _positive_int("--seeds-cal", seeds_cal)
    _positive_int("--seeds-eval", seeds_eval)
    if maxfev is not None:
        _positive_int("--maxfev", maxfev)
    if (steps is None) == (nfe is None):
        raise UserError("--steps / --nfe", None, hint="give exactly one: --steps N or --nfe B")
    lo = 3 if fix_ends else 2
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < lo):
        raise UserError("--steps", steps, hint=(
            "at least 3 with fixed ends: N steps have N - 2 interior points to move (then t = 0;"
            " --free-ends also moves the last point, from N = 2)" if fix_ends else
            "at least 2 with --free-ends: the last positive point moves (then t = 0)"))
    if nfe is not None:
        _positive_int("--nfe", nfe)
    den = load_model(model) if den is None else den
    s = get_solver(solver, **(solver_opts or {}))
    if s.adaptive or s.stages is None:
        raise UserError("SOLVER", solver, hint="tune-grid needs a fixed-step solver (an adaptive "
                        "one chooses its own steps)")
    if s.stochastic:
        raise UserError("SOLVER", solver, hint="tune-grid needs a deterministic ODE solver (its "
                        "error is measured against the probability-flow ODE's reference)")
    name, params = resolve_grid(init, dict(init_params or {}), den)
    if name == "list":
        raise UserError("--init", name, hint="start from a grid family (karras, logsnr, ...)")
    if nfe is not None:
        from samplerbench.bench.budgets import steps_for_budget

        got = steps_for_budget(s, den, name, params, "zero", nfe)
        if got is None or got[0] < lo:
            raise UserError("--nfe", nfe, hint=f"{solver} needs a larger budget for {lo} steps "
                            f"(N steps have N - 2 interior points)")
        steps = got[0]
    start = make_grid(name, den.schedule, steps, final="zero", **params)
    reason = s.check(den, start)
    if reason:
        raise UserError(f"solver {solver!r} on model {model!r}", start.name, hint=reason)
    return den, s, start, steps


def tune_grid(model: str, solver: str, steps: int | None = None, nfe: int | None = None,
              seeds_cal: int = 64, seeds_eval: int = 64, seed: int = 0, fix_ends: bool = True,
              objective: str = "auto", optimizer: str = "nelder-mead",
              solver_opts: dict | None = None, init: str = AUTO, init_params: dict | None = None,
              dtype: str | None = None, maxfev: int | None = None, device: str = "cpu",
              log=None, den=None) -> dict:
    """Tune the grid (module docstring) and evaluate it on held-out seeds.  Returns the grid spec
    to write: ``{"name": "list", "values": [N positive times], "space": "t", "metadata": ...}``.
    ``objective="auto"``: ``reference`` on analytic models, ``refine`` on trained networks.
    ``dtype``: the solver state's (default float64 on analytic models, float32 otherwise).
    ``den``: the model ``model`` names, already loaded (a table of many cells loads it once)."""
    from scipy.optimize import minimize

    from samplerbench.bench.env import git_sha
    from samplerbench.bench.runner import resolve_device

    den, s, start, steps = check_tune_args(model, solver, steps, nfe, seeds_cal, seeds_eval,
                                           fix_ends, objective, optimizer, solver_opts, init,
                                           init_params, dtype, maxfev, den)
    analytic = is_analytic(model)
    objective = ("reference" if analytic else "refine") if objective == "auto" else objective
    dtype = dtype or ("float64" if analytic else "float32")
    dev = resolve_device(device)
    log = log or (lambda msg: None)
    t0 = time.perf_counter()

    n = steps                                      # positive points (final="zero")
    start_pts = start.t[:-1].clone()
    param = GridParams(den.schedule, start.t_start, start.t_end, n, fix_ends)

    def problem(first, count, want_ref):
        x_init, x_ref = reference_endpoint(model, den, start, first, count, dtype, dev,
                                           need_ref=objective == "reference" or want_ref)
        return _Problem(den, s, objective, x_init, x_ref, start.t_end)

    cal_seeds = (int(seed), int(seed) + seeds_cal)
    eval_seeds = (cal_seeds[1], cal_seeds[1] + seeds_eval)         # disjoint by construction
    log(f"calibration: {seeds_cal} seeds {cal_seeds[0]}..{cal_seeds[1] - 1}, objective "
        f"{objective}" + (" (float64 dopri8 reference)" if objective == "reference" else ""))
    cal = problem(cal_seeds[0], seeds_cal, False)

    def f(theta):
        return _log(cal.value(param.points(theta)))

    theta0 = param.theta(start_pts)       # free ends: the end nudged off t_min (FREE_END_INIT)
    f_start = _log(cal.value(start_pts))  # the start grid itself
    best = {"f": math.inf, "theta": theta0}

    budget = maxfev or 150 * (param.dim + 1)

    class _Spent(Exception):
        pass

    def tracked(theta):
        if cal.evals >= budget:              # a hard cap: scipy checks maxfev per iteration
            raise _Spent
        v = f(theta)
        if v < best["f"]:
            best.update(f=v, theta=np.array(theta, dtype=np.float64))
        return v

    rounds = []
    for r in range(2):                              # a restart from the best point
        left = budget - cal.evals
        if left <= param.dim + 1:
            break
        x0 = best["theta"]
        before = cal.evals
        try:
            if optimizer == "nelder-mead":
                simplex = np.vstack([x0] + [x0 + 0.5 * e for e in np.eye(param.dim)])
                res = minimize(tracked, x0, method="Nelder-Mead",
                               options={"initial_simplex": simplex, "maxfev": left // (2 - r),
                                        "xatol": 1e-3, "fatol": 1e-5})
            else:
                res = minimize(tracked, x0, method="Powell",
                               options={"maxfev": left // (2 - r), "xtol": 1e-3, "ftol": 1e-5})
            rounds.append({"evaluations": int(res.nfev), "f": float(res.fun),
                           "message": str(res.message)})
        except _Spent:
            rounds.append({"evaluations": cal.evals - before, "f": float(best["f"]),
                           "message": "the --maxfev evaluation budget is spent"})
            break
    opt_evals, opt_nfe = cal.evals, cal.nfe       # the optimisation's (start grid included)
    tuned_pts = param.points(best["theta"])
    if best["f"] >= f_start:                        # never worse than the start on calibration
        tuned_pts = start_pts
    tune_s = time.perf_counter() - t0
    log(f"optimised: {opt_evals} evaluations, {opt_nfe} model calls, {tune_s:.1f} s")

    # calibration and held-out numbers of the start and tuned grids
    cal_start, cal_tuned = cal.per_seed(start_pts), cal.per_seed(tuned_pts)
    want_ref = objective == "refine" and analytic
    log(f"held-out: {seeds_eval} seeds {eval_seeds[0]}..{eval_seeds[1] - 1}")
    held = problem(eval_seeds[0], seeds_eval, want_ref)
    ev_start, ev_tuned = held.per_seed(start_pts), held.per_seed(tuned_pts)
    errors = {"objective": objective,
              "calibration": _paired_summary(cal_start, cal_tuned),
              "held_out": _paired_summary(ev_start, ev_tuned)}
    if want_ref:
        errors["held_out_err_rms"] = _paired_summary(held.per_seed(start_pts, "reference"),
                                                     held.per_seed(tuned_pts, "reference"))
    meta = {
        "tool": "samplerbench tune-grid",
        "model": model, "solver": s.name, "solver_params": s.params(),
        "steps": steps, "nfe": _counted_nfe(s, den, tuned_pts), "final": "zero",
        "start_grid": {"name": start.name, **start.params},
        "start_values": start_pts.tolist(),
        "objective": objective,
        "objective_doc": ("err_rms against the float64 dopri8 reference (rtol = atol = 1e-10)"
                          if objective == "reference" else
                          "RMS distance to the same solver on the grid with every interval "
                          "halved in log(sigma/alpha)"),
        "parametrisation": "softmax increments of log(sigma/alpha) between fixed ends"
                           + ("" if fix_ends else "; last point free in (t_min, previous point)"),
        "fix_ends": fix_ends,
        "optimizer": {"method": optimizer, "on": "log(objective)", "rounds": rounds,
                      "evaluations": opt_evals, "model_calls": opt_nfe},
        "dtype": dtype,
        "seeds_calibration": {"first": cal_seeds[0], "count": seeds_cal},
        "seeds_held_out": {"first": eval_seeds[0], "count": seeds_eval},
        "errors": errors,
        "wall_s": round(time.perf_counter() - t0, 3),
        "git_sha": git_sha(),
    }
    return {"name": "list", "values": tuned_pts.tolist(), "space": "t", "metadata": meta}


def _counted_nfe(solver, den, points) -> int:
    from samplerbench.bench.budgets import _ZeroDenoiser

    grid = make_grid("list", den.schedule, points.numel(), final="zero", values=points.tolist(),
                     space="t")
    stand_in = _ZeroDenoiser(den.schedule, den.data_shape)
    x = torch.zeros(1, *den.data_shape, dtype=torch.float64)
    return int(solver.solve(solver.make_dynamics(stand_in), x, grid).nfe)


def write_grid_spec(spec: dict, out) -> Path:
    """Write the grid spec atomically (JSON, full float precision: the grid read back from the
    file has exactly these points)."""
    from samplerbench.bench.store import atomic_write_text

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(spec, indent=1, default=str) + "\n")
    return path


def summary_lines(spec: dict) -> list[str]:
    """The start-vs-tuned table that ``tune-grid`` prints."""
    m = spec["metadata"]
    e = m["errors"]
    start = m["start_grid"]["name"]
    lines = [f"{m['model']} {m['solver']}: {m['steps']} steps ({m['nfe']} NFE), objective "
             f"{m['objective']}, {m['optimizer']['evaluations']} evaluations, {m['wall_s']:.1f} s",
             f"{'':<34}{start:>12}{'tuned':>12}{'change':>9}   paired diff +- se"]

    def row(label, d):
        ch = d["tuned"] / d["start"] - 1 if d["start"] else math.nan
        se = f"{d['diff']:+.3e} +- {d['diff_se']:.1e}" if d.get("diff_se") is not None else \
            f"{d['diff']:+.3e}"
        return f"{label:<34}{d['start']:>12.4e}{d['tuned']:>12.4e}{ch:>+9.1%}   {se}"

    sc, sh = m["seeds_calibration"], m["seeds_held_out"]
    lines.append(row(f"calibration ({sc['count']} seeds from {sc['first']})", e["calibration"]))
    lines.append(row(f"held-out ({sh['count']} seeds from {sh['first']})", e["held_out"]))
    if "held_out_err_rms" in e:
        lines.append(row("held-out err_rms (reference)", e["held_out_err_rms"]))
    return lines
