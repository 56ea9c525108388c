"""``samplerbench sample diffusers:PATH --like-diffusers``: diffusers' own sampling loop
(``scheduler.set_timesteps(N)`` then ``scheduler.step`` N times) as a samplerbench choice of
solver, grid, ``final`` and solver options, read from the folder's
``scheduler/scheduler_config.json``.

The grid is the scheduler's own: ``set_timesteps(N)`` lists the noise levels it visits (its
``sigmas``, or DDIM's ``alphas_cumprod`` at its ``timesteps``); a built-in grid that lands on the
same points (``leading``, ``trailing``, ``uniform``, ``karras``, ``exponential``, ``beta``,
``shift``) is named with its parameters, otherwise the points are a ``list`` grid.  The network is
called at the scheduler's own timesteps on those points (diffusers rounds some of them, e.g.
DPMSolverMultistep / UniPC with Karras sigmas, or calls fractional ones, e.g. Euler with
``linspace`` spacing).  A final sigma of 0 (DDIM: final alpha_cumprod = 1) is ``final="zero"``.

Where diffusers has a known defect the algorithm is followed, not the defect, and the mapping says
so (``Plan.differences``):

* ``UniPCMultistepScheduler(solver_type="bh1")``: its last step into sigma = 0 returns NaN
  (B(h) = -h = -inf times a zero correction); here it is the denoise step (what bh2's is).
* ``DDIMScheduler``: each step goes to timestep t - T // N, not to the next listed timestep; with
  ``linspace`` spacing (and ``trailing`` when N does not divide T) the two differ and the model is
  then evaluated at a timestep that is not the sample's noise level.  Here every step goes to the
  next listed timestep.
* ``FlowMatchEulerDiscreteScheduler``: ``set_timesteps`` spaces the unshifted timesteps from 1 to
  the *already shifted* sigma_min and shifts again, so its last sigma is shift(shift(1/T)) and
  every point moves with it.  Here the points are shift(linspace(1, 1/T, N)) (the ``shift`` grid
  ending at t_min = shift(1/T)): diffusers' own loop given those unshifted sigmas.

Not defects, but not copied either: the step into sigma = 0 is the denoise step for every solver
(diffusers' LMS takes a fourth-order step there); ``x_init`` = sigma(t_start) z (diffusers' DDPM
pipelines start from z, its Euler-family schedulers from sqrt(sigma^2 + 1) z for linspace /
trailing spacing); stochastic samplers draw samplerbench's per-sample noise, not torch.Generator's.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from samplerbench.models.errors import UserError

# the schedulers --like-diffusers maps, and the config options each one understands besides the
# noise table and prediction type (which the diffusers adapter reads)
_TABLE = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
          "prediction_type", "timestep_spacing", "steps_offset")
_SIGMAS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# options that only act together with another one that is refused when set (thresholding,
# use_flow_sigmas, use_dynamic_shifting): ignored
_INERT = ("dynamic_thresholding_ratio", "sample_max_value", "flow_shift", "time_shift_type",
          "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")

OPTIONS = {
    "DDIMScheduler": _TABLE + ("clip_sample", "clip_sample_range", "set_alpha_to_one"),
    "DPMSolverMultistepScheduler": _TABLE + _SIGMAS + (
        "solver_order", "algorithm_type", "solver_type", "lower_order_final", "euler_at_final",
        "use_lu_lambdas", "final_sigmas_type", "lambda_min_clipped", "variance_type"),
    "UniPCMultistepScheduler": _TABLE + _SIGMAS + (
        "solver_order", "solver_type", "lower_order_final", "final_sigmas_type", "sigma_min",
        "sigma_max"),
    "DEISMultistepScheduler": _TABLE + _SIGMAS + ("solver_order", "lower_order_final"),
    "EulerDiscreteScheduler": _TABLE + _SIGMAS + (
        "interpolation_type", "sigma_min", "sigma_max", "final_sigmas_type"),
    "HeunDiscreteScheduler": _TABLE + _SIGMAS,
    "LMSDiscreteScheduler": _TABLE + _SIGMAS,
    "EulerAncestralDiscreteScheduler": _TABLE,
    "FlowMatchEulerDiscreteScheduler": ("num_train_timesteps", "shift"),
}
SUPPORTED = sorted(OPTIONS)


@dataclass(frozen=True)
class Plan:
    """What ``--like-diffusers`` runs: the solver with its options, the grid with its parameters,
    ``final``, the network's timesteps at the grid points, and the deliberate differences."""

    scheduler: str
    steps: int                      # N of set_timesteps(N)
    solver: str
    solver_opts: dict
    grid: str
    grid_params: dict
    final: str
    grid_steps: int                 # steps of our grid (N, or N - 1 where a no-op step is dropped)
    timesteps: tuple                # the network's timestep at grid point i (the scheduler's)
    differences: tuple = field(default_factory=tuple)

    def line(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.solver_opts.items())
        gp = " ".join(f"{k}={_fmt(v)}" for k, v in self.grid_params.items() if k != "values")
        grid = (f"list of the scheduler's {len(self.grid_params['values'])} points "
                f"(space={self.grid_params['space']})" if self.grid == "list" else
                f"{self.grid}{' ' + gp if gp else ''}")
        out = (f"like diffusers {self.scheduler} (set_timesteps({self.steps})): solver "
               f"{self.solver}{' ' + opts if opts else ''}, grid {grid}, final {self.final}, "
               "network at the scheduler's timesteps")
        if self.differences:
            out += "; not copied: " + "; ".join(self.differences)
        return out

    def record(self) -> dict:
        return {"scheduler": self.scheduler, "steps": self.steps, "solver": self.solver,
                "solver_opts": self.solver_opts, "grid": self.grid,
                "grid_params": self.grid_params, "final": self.final,
                "timesteps": [float(k) for k in self.timesteps],
                "differences": list(self.differences), "line": self.line()}


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def scheduler_config(path) -> dict:
    """The scheduler config of the diffusers folder ``path`` (as the adapter finds it)."""
    from samplerbench.models.adapters_diffusers import _diffusers_layout
    from samplerbench.models.weights import read_json

    _, sched_path = _diffusers_layout(Path(path).expanduser())
    return read_json(sched_path, "scheduler_config.json")


def _scheduler(cfg: dict):
    from samplerbench.models.adapters_diffusers import _diffusers_class
    from samplerbench.models.nets import quiet_diffusers

    name = cfg.get("_class_name")
    if name not in OPTIONS:
        raise UserError("--like-diffusers: scheduler _class_name", name, SUPPORTED,
                        hint="no samplerbench equivalent is mapped for it; choose a SOLVER "
                        "and --grid instead")
    cls = _diffusers_class(name, "SchedulerMixin")
    try:
        with quiet_diffusers():
            sched = cls.from_config(cfg)
    except (TypeError, ValueError, KeyError, AttributeError, NotImplementedError) as exc:
        raise UserError("--like-diffusers: scheduler_config.json", name,
                        hint=f"diffusers' {name} cannot be built from it ({exc}); fix the "
                        "option's value or type") from None
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key, default in defaults.items():
        value = sched.config.get(key, default)
        if key in OPTIONS[name] or key in _INERT or _same(value, default):
            continue
        raise UserError(f"--like-diffusers: {name} option", f"{key}={value!r}",
                        hint=f"not mapped (supported: {', '.join(OPTIONS[name])}); set it to "
                        f"{default!r} or choose a SOLVER and --grid instead")
    return sched


def check(path) -> str:
    """The scheduler class of the diffusers folder ``path`` if --like-diffusers maps it and all
    its options; else ``UserError`` naming the class or the option."""
    return type(_scheduler(scheduler_config(path))).__name__


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _refuse(name, key, value, hint):
    raise UserError(f"--like-diffusers: {name} option", f"{key}={value!r}", hint=hint)


# ----------------------------------------------------------------------------------------------

def _solver(name: str, c, steps: int, final: str) -> tuple[str, dict, list[str]]:
    """(solver, options, differences) for scheduler ``name`` with config ``c``."""
    notes: list[str] = []
    if name == "DDIMScheduler":
        return "ddim", ({"clip_x0": float(c.clip_sample_range)} if c.clip_sample else {}), notes
    if name == "DPMSolverMultistepScheduler":
        if c.algorithm_type != "dpmsolver++":
            _refuse(name, "algorithm_type", c.algorithm_type, "only 'dpmsolver++' is mapped "
                    "(dpmpp_2m / dpmpp_3m)")
        order = int(c.solver_order)
        if order > 1 and c.solver_type != "midpoint":
            _refuse(name, "solver_type", c.solver_type, "only 'midpoint' is mapped (dpmpp_2m)")
        if c.euler_at_final and final == "t_min" and order > 1 and not (
                c.lower_order_final and steps < 15):
            _refuse(name, "euler_at_final", True, "a first-order last step into sigma_min is "
                    "not built in (it is with lower_order_final below 15 steps)")
        if order == 1:
            return "ddim", {}, notes
        if order == 2:
            return "dpmpp_2m", {"lower_order_final": bool(c.lower_order_final)}, notes
        if order == 3:
            return "dpmpp_3m", {"variant": "diffusers",
                                "lower_order_final": bool(c.lower_order_final)}, notes
        _refuse(name, "solver_order", order, "1, 2 or 3")
    if name == "UniPCMultistepScheduler":
        order = int(c.solver_order)
        if order not in (1, 2, 3):
            _refuse(name, "solver_order", order, "1, 2 or 3")
        if final == "t_min" and c.lower_order_final and order > 1:
            _refuse(name, "lower_order_final", True, "with final_sigmas_type='sigma_min' "
                    "diffusers lowers the order of the last steps on a grid ending at sigma_min, "
                    "which unipc does not; set lower_order_final false")
        if c.solver_type == "bh1" and final == "zero":
            notes.append("diffusers' UniPC bh1 returns NaN on its last step into sigma = 0 "
                         "(B(h) = -h = -inf times a zero correction): here it is the denoise step")
        return f"unipc_{c.solver_type}", {"solver_order": order,
                                           "lower_order_final": bool(c.lower_order_final)}, notes
    if name == "DEISMultistepScheduler":
        return "deis", {"solver_order": int(c.solver_order),
                        "lower_order_final": bool(c.lower_order_final)}, notes
    if name == "EulerDiscreteScheduler":
        if c.timestep_type != "discrete":
            _refuse(name, "timestep_type", c.timestep_type, "only 'discrete' is mapped")
        return "ddim", {}, notes          # Euler in sigma/alpha is the DDIM step
    if name == "HeunDiscreteScheduler":
        return "edm_heun", {}, notes
    if name == "LMSDiscreteScheduler":
        if final == "zero":
            notes.append("diffusers' LMS takes an order-4 LMS step into sigma = 0; here the step "
                         "into 0 is the denoise step, as for every solver")
        return "lms", {"solver_order": 4}, notes     # LMSDiscreteScheduler.step(order=4)
    if name == "EulerAncestralDiscreteScheduler":
        notes.append("the ancestral noise is samplerbench's per-sample stream, not "
                     "torch.Generator's draws")
        return "euler_ancestral", {"eta": 1.0}, notes
    return "euler", {}, notes                          # FlowMatchEulerDiscreteScheduler


def _dedupe(values: list[float]) -> list[int]:
    """Indices of the first of each run of equal consecutive values (Heun repeats its points)."""
    return [i for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def _vp_points(name, sched, steps, schedule):
    """(positive t points, final, network timesteps, differences) of a DDPM-family scheduler."""
    notes: list[str] = []
    T = int(sched.config.num_train_timesteps)
    with _quiet():
        sched.set_timesteps(steps)
    ts = [float(k) for k in sched.timesteps.tolist()]
    if name == "DDIMScheduler":
        k = [int(v) for v in ts]
        t = [(v + 1) / T for v in k]
        ratio = T // steps
        nxt = k[1:] + [None]
        quirk = [(a, a - ratio, b) for a, b in zip(k, nxt) if b is not None and a - ratio != b]
        if quirk:
            a, p, b = quirk[0]
            notes.append(f"diffusers' DDIM steps from timestep t to t - {T}//{steps} = "
                         f"t - {ratio}, not to the next listed timestep (from {a} to {p}, then "
                         f"evaluates at {b}: {len(quirk)} of {steps} steps); here each step "
                         "goes to the next listed timestep")
        if sched.config.set_alpha_to_one:
            return t, "zero", ts, notes
        if k[-1] == 0:
            notes.append("diffusers' last step from timestep 0 to alphas_cumprod[0] "
                         "(set_alpha_to_one=False) moves nothing and costs 1 NFE: dropped")
            return t, "t_min", ts, notes
        return t + [1.0 / T], "t_min", ts, notes       # the last step lands on timestep 0
    sig = [float(s) for s in sched.sigmas.tolist()]
    if name == "HeunDiscreteScheduler":
        keep = _dedupe(sig)
        sig = [sig[i] for i in keep]
        tsk = _dedupe(ts)
        ts = [ts[i] for i in tsk]
    final = "zero" if sig[-1] == 0.0 else "t_min"
    pos = sig[:-1] if final == "zero" else sig
    t = schedule.t_from_ratio(torch.tensor(pos, dtype=torch.float64)).tolist()
    return t, final, ts, notes


def _flow_points(sched, steps):
    c = sched.config
    T = int(c.num_train_timesteps)
    shift = float(c.shift)
    notes = []
    u = np.linspace(1.0, 1.0 / T, steps)
    with _quiet():
        sched.set_timesteps(sigmas=u)                   # the algorithm: one shift
    t = [float(s) for s in sched.sigmas[:-1].tolist()]
    ts = [float(k) for k in sched.timesteps.tolist()]
    t_min = shift * (1.0 / T) / (1 + (shift - 1) * (1.0 / T))
    if shift != 1.0:
        notes.append(f"diffusers' set_timesteps({steps}) ends at the double-shifted sigma "
                     f"shift(shift(1/{T})) = {shift * t_min / (1 + (shift - 1) * t_min):.6g} "
                     f"and moves every point with it; here the points are "
                     f"shift(linspace(1, 1/{T}, {steps})), ending at shift(1/{T}) = {t_min:.6g}")
    return t, "zero", ts, notes, {"shift": shift, "t_min": t_min}


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _candidates(name, c, flow_params):
    if flow_params is not None:
        return [("shift", flow_params)]
    out = []
    spacing = c.get("timestep_spacing", "linspace")
    if c.get("use_karras_sigmas"):
        out.append(("karras", {}))
    elif c.get("use_exponential_sigmas"):
        out.append(("exponential", {}))
    elif c.get("use_beta_sigmas"):
        out.append(("beta", {}))
    elif spacing == "leading":
        out.append(("leading", {"steps_offset": int(c.get("steps_offset", 0))}))
    elif spacing == "trailing":
        out.append(("trailing", {}))
    elif spacing == "linspace":
        out.append(("uniform", {}))
    return out


def _name_grid(schedule, t, final, candidates):
    """The first candidate built-in grid whose points are ``t`` (1e-6 relative), else list."""
    from samplerbench.solvers.grids import make_grid

    want = torch.tensor(t, dtype=torch.float64)
    steps = len(t) if final == "zero" else len(t) - 1
    for gname, params in candidates:
        try:
            g = make_grid(gname, schedule, steps, final=final, **params)
        except UserError:
            continue
        got = g.t[:-1] if final == "zero" else g.t
        if got.shape == want.shape and bool(((got - want).abs() <= 1e-6 * want).all()):
            return g
    space = "t" if schedule.name == "rf" else "ratio"
    values = t if space == "t" else schedule.ratio(want).tolist()
    return make_grid("list", schedule, steps, final=final, values=values, space=space)


def plan(path, steps: int, denoiser) -> tuple[Plan, object]:
    """The :class:`Plan` for the diffusers folder ``path`` at ``steps`` = N, and its grid on
    ``denoiser`` (the folder loaded by the diffusers adapter)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError("--steps", steps, hint="an integer >= 1 (set_timesteps(N))")
    cfg = scheduler_config(path)
    sched = _scheduler(cfg)
    name = type(sched).__name__
    schedule = denoiser.schedule
    flow_params = None
    if name.startswith("FlowMatch"):
        t, final, ts, notes, flow_params = _flow_points(sched, steps)
    else:
        try:
            t, final, ts, notes = _vp_points(name, sched, steps, schedule)
        except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
            # set_timesteps refusing N (too many steps) or a config value (timestep_spacing)
            raise UserError("--like-diffusers: --steps / scheduler_config.json",
                            f"{name}, --steps {steps}", hint=f"{name}.set_timesteps({steps}) "
                            f"refuses it: {exc}; check --steps and the config's "
                            "timestep_spacing / steps_offset") from None
    solver, opts, more = _solver(name, sched.config, steps, final)
    grid = _name_grid(schedule, t, final, _candidates(name, sched.config, flow_params))
    params = {k: v for k, v in grid.params.items()}
    p = Plan(scheduler=name, steps=steps, solver=solver, solver_opts=opts, grid=grid.name,
             grid_params=params, final=final, grid_steps=grid.steps,
             timesteps=tuple(ts[: len(t)]), differences=tuple(notes + more))
    return p, grid


class SchedulerTimesteps:
    """The network's timestep function on a plan's grid: at grid point t_i the scheduler's own
    timesteps[i] (integers where diffusers rounds, fractions where it interpolates), elsewhere
    the adapter's k(t)."""

    def __init__(self, grid_t, timesteps, fallback):
        n = min(len(timesteps), len(grid_t))
        self.t = torch.as_tensor(grid_t[:n], dtype=torch.float64)
        self.k = torch.as_tensor(list(timesteps[:n]), dtype=torch.float64)
        self.fallback = fallback

    def __call__(self, t):
        t64 = t.to(torch.float64).reshape(-1, 1)
        table = self.t.to(t64.device)
        hit = (t64 - table).abs() <= 1e-6 * table
        out = self.fallback(t).to(torch.float64)
        found = hit.any(dim=1)
        if found.any():
            idx = hit.to(torch.int64).argmax(dim=1)
            out = torch.where(found.reshape(out.shape), self.k.to(t64.device)[idx].reshape(
                out.shape), out)
        return out


def apply(denoiser, p: Plan, grid) -> None:
    """Make ``denoiser`` (a diffusers folder) call its network at the scheduler's timesteps on
    ``grid`` (see :class:`SchedulerTimesteps`)."""
    net = getattr(denoiser, "net", None)
    if net is None or not hasattr(net, "timestep_fn"):
        raise UserError("--like-diffusers", getattr(denoiser, "source", None),
                        hint="the model must be a diffusers:PATH folder")
    net.timestep_fn = SchedulerTimesteps(grid.t.tolist(), p.timesteps, net.timestep_fn)
