"""The benchmark matrix spec: TOML (or the CLI's ad-hoc flags), validated once at load.

```toml
name = "quick"
models  = ["gmm2d", "gmm64", "gmm:my_mixture.json"]
solvers = ["euler", "heun", { name = "euler_ancestral", eta = 1.0 }]
grids   = ["karras", { name = "uniform" }, "@my_grid.json"]   # or "auto": the model's
                                  # recommended grid (a diffusers flow model's shift; else karras);
                                  # @FILE.json: {"name": ..., <params>}, relative to this file
steps   = [4, 8, 16, 32]          # fixed-step solvers
nfe     = [6, 8, 10]              # and/or equal budgets: per solver the largest step count whose
                                  # counted NFE is <= the budget (recorded: nfe_budget, steps, nfe)
tolerances = [1e-3, 1e-5]         # adaptive solvers: rtol = atol = tol
final   = "zero"                  # or "t_min" (no denoise step; convergence studies)
samples = 64
seed    = 0                       # sample i uses seed + i
noise   = ["fresh", "brownian"]   # stochastic solvers only
guidance = [0.0, 1.0, 3.0]        # classifier-free guidance weights (class-conditional models)
dtype   = "float64"               # model dtype, or an axis: ["float32", "bfloat16"]; "native":
                                  # float64 for analytic models, float32 for trained networks
state_dtype = "float64"           # solver state (default: float64 for a float64 model, else float32)
device  = "cpu"                   # cpu | cuda | auto
threads = 1                       # torch intra-op threads (default: torch's choice)
compile = false                   # torch.compile the model: true (inductor) or a backend name
max_nfe = 20000                   # stop a solve after this many model calls: the cell is
                                  # recorded as failed ("NFE budget"); default: no limit

[reference]                       # float64 dopri8 reference for err_rms / err_max
rtol = 1e-10
atol = 1e-10
sde_steps = 1024                  # stochastic cells, brownian noise: the same solver at this
                                  # many steps on the same Brownian path (strong error)

[timing]
warmup = 1
repeats = 3
single_over_s = 1.0               # a cell whose first solve takes >= this is timed by that solve
                                  # alone (its samples are the scored ones); false: always repeat

[metrics]
nonconv = true                    # also solve at 2N steps (same seed): RMS(x_N - x_2N);
                                  # "analytic": only for analytic models (as error)
weak = true                       # distributional distances (Frechet / swd / FID) where defined
kid = false                       # digits models: also KID (kid, kid_se, kid_protocol)
fid_features = "auto"             # digits FID/KID features: "auto" (digits network) | "inception"
blocks = 8                        # seed blocks for the jackknife se of quality metrics (>= 2,
                                  # dividing samples; default: the largest divisor of samples <= 8)
```
Every problem raises ``UserError`` naming the field, the value and the valid choices, before any
output is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from samplerbench.models.errors import UserError

DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "mps", "auto")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")

_TOP_KEYS = {"name", "description", "models", "solvers", "grids", "steps", "nfe", "tolerances",
             "final",
             "samples", "seed", "noise", "guidance", "dtype", "state_dtype", "device", "threads",
             "compile", "max_nfe", "reference", "timing", "metrics"}
_SUB_KEYS = {"reference": {"rtol", "atol", "sde_steps"},
             "timing": {"warmup", "repeats", "single_over_s"},
             "metrics": {"nonconv", "error", "weak", "kid", "fid_features", "blocks"}}


@dataclass(frozen=True)
class NamedParams:
    """A solver or grid entry: its name and its parameters."""

    name: str
    params: dict = field(default_factory=dict)

    def key(self) -> str:
        return self.name + json.dumps(self.params, sort_keys=True) if self.params else self.name


@dataclass(frozen=True)
class Spec:
    name: str
    models: list[str]
    solvers: list[NamedParams]
    grids: list[NamedParams]
    steps: list[int]
    tolerances: list[float]
    final: str = "zero"
    samples: int = 64
    seed: int = 0
    noise: list[str] = field(default_factory=lambda: ["fresh"])
    guidance: list = field(default_factory=lambda: [None])   # CFG weights w (None: no guidance)
    dtype: list[str] = field(default_factory=lambda: ["float32"])
    state_dtype: str | None = None          # None: float64 for a float64 model, else float32
    device: str = "cpu"
    description: str = ""
    ref_rtol: float = 1e-10
    ref_atol: float = 1e-10
    warmup: int = 1
    repeats: int = 3
    nonconv: bool = True
    error: bool = True
    weak: bool = True
    kid: bool = False                 # KID beside FID for digits models
    fid_features: str = "auto"        # "auto" (per-dataset network) | "inception"
    sde_ref_steps: int = 1024
    threads: int | None = None        # torch intra-op threads (None: torch's default)
    compile: str | None = None        # torch.compile backend of the model (None: not compiled)
    max_nfe: int | None = None        # model calls per solve before a cell stops (None: no cap)
    nfe: list[int] = field(default_factory=list)   # NFE budgets (fixed-step solvers)
    blocks: int | None = None         # seed blocks of the quality metrics' jackknife (None: none)
    single_over_s: float | None = 1.0  # time a cell by its first solve alone when it is this slow
    # the models parse_spec loaded to validate the spec, by name: the runner reuses them instead
    # of loading each model a second time (not part of the spec: no digest, no run.json)
    loaded: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, loaded={}))
        del d["loaded"]
        d["solvers"] = [{"name": s.name, **s.params} for s in self.solvers]
        d["grids"] = [{"name": g.name, **g.params} for g in self.grids]
        return d

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------

def _list(raw: dict, key: str, default=None) -> list:
    v = raw.get(key, default)
    if v is None:
        raise UserError(key, None, hint=f"'{key}' is required (a non-empty list)")
    if not isinstance(v, list):
        v = [v]
    if not v:
        raise UserError(key, v, hint=f"'{key}' must not be empty")
    return v


def _int(key, v, lo=None):
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise UserError(key, v, hint=f"expected an integer >= {lo}" if lo is not None else
                        "expected an integer")
    return v


def _steps(v) -> int:
    from samplerbench.solvers.grids import MAX_STEPS

    _int("steps", v, 1)
    if v > MAX_STEPS:
        raise UserError("steps", v, hint=f"at most {MAX_STEPS} steps per solve")
    return v


def max_threads() -> int:
    """The most intra-op threads a spec may ask for: a few per CPU."""
    return 4 * (os.cpu_count() or 1)


def check_name(name) -> str:
    """A run name is one safe path component: results/<name> must stay inside results/."""
    if (not isinstance(name, str) or not name.strip() or name in (".", "..")
            or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise UserError("name", name, hint="a file name: non-empty, not '.' or '..', without "
                        "'/', '\\' or control characters (set name = \"...\" in the spec)")
    return name


def _named(key: str, entries: list) -> list[NamedParams]:
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append(NamedParams(e))
        elif isinstance(e, dict) and isinstance(e.get("name"), str):
            out.append(NamedParams(e["name"], {k: v for k, v in e.items() if k != "name"}))
        else:
            raise UserError(key, e, hint='each entry is a name or a table {name = "...", ...}')
    return out


def grid_entries(grids: list[NamedParams], base=None, field: str = "grids"
                 ) -> tuple[list[NamedParams], list[str | None]]:
    """Grid entries with ``@FILE.json`` read (as a string or as a table's name; a table's other
    keys override the file's parameters; relative paths from ``base``, the spec's folder) and
    the source of each (the file, for error messages; None for a grid named inline)."""
    from samplerbench.solvers.grids import load_grid_file

    out, sources = [], []
    for g in grids:
        if g.name.startswith("@"):
            name, params = load_grid_file(g.name, field, base=base)
            out.append(NamedParams(name, {**params, **g.params}))
            sources.append(f"{field} {g.name}")
        else:
            out.append(g)
            sources.append(None)
    return out, sources


def parse_spec(raw: dict, default_name: str = "adhoc", base=None) -> Spec:
    """Validate a spec dict (parsed TOML) completely; return a :class:`Spec`.  ``base``: the
    folder relative ``@FILE.json`` grids are read from (the spec file's; default the current
    one)."""
    from samplerbench.models.zoo import available_models, load_model
    from samplerbench.solvers import NOISE_MODES, get_solver
    from samplerbench.solvers.grids import FINALS, check_grid_spec

    if not isinstance(raw, dict):
        raise UserError("spec", type(raw).__name__, hint="expected a TOML table")
    for k in raw:
        if k not in _TOP_KEYS:
            raise UserError("spec key", k, sorted(_TOP_KEYS))
    for sub, keys in _SUB_KEYS.items():
        if sub in raw:
            if not isinstance(raw[sub], dict):
                raise UserError(sub, raw[sub], hint=f"[{sub}] must be a table")
            for k in raw[sub]:
                if k not in keys:
                    raise UserError(f"{sub} key", k, sorted(keys))

    name = check_name(raw.get("name", default_name))

    models = _list(raw, "models")
    for m in models:
        if not isinstance(m, str):
            raise UserError("models", m, available_models() + ["gmm:PATH.json"])
    denoisers = {m: load_model(m) for m in models}          # validates names and gmm: files

    solvers = _named("solvers", _list(raw, "solvers"))
    instances = [get_solver(s.name, **s.params) for s in solvers]
    grids, grid_sources = grid_entries(_named("grids", _list(raw, "grids", ["karras"])), base)

    fixed = [s for s in instances if not s.adaptive]
    adaptive = [s for s in instances if s.adaptive]
    nfe = [_int("nfe", v, 1) for v in _list(raw, "nfe")] if "nfe" in raw else []
    if len(set(nfe)) != len(nfe):
        raise UserError("nfe", raw["nfe"], hint="each NFE budget once")
    steps = ([_steps(v) for v in _list(raw, "steps")]
             if (fixed and not nfe) or "steps" in raw else [])
    tolerances = []
    if adaptive or "tolerances" in raw:
        for v in _list(raw, "tolerances"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise UserError("tolerances", v, hint="each tolerance is a number in (0, 1)")
            tolerances.append(float(v))
    for s, inst in zip(solvers, instances):
        if inst.adaptive and ("rtol" in s.params or "atol" in s.params):
            raise UserError(f"solvers.{s.name}", "rtol/atol",
                            hint="set tolerances with the 'tolerances' axis, not per solver")

    final = raw.get("final", "zero")
    if final not in FINALS:
        raise UserError("final", final, FINALS)
    samples = _int("samples", raw.get("samples", 64), 1)
    from samplerbench.bench.stats import default_blocks

    blocks = (raw.get("metrics") or {}).get("blocks") if isinstance(raw.get("metrics"), dict) \
        else None
    if blocks is None:
        blocks = default_blocks(samples)
    else:
        _int("metrics.blocks", blocks, 2)
        if samples % blocks:
            raise UserError("metrics.blocks", blocks, hint=f"the seed blocks must divide "
                            f"samples = {samples} (e.g. blocks = "
                            f"{default_blocks(samples) or 'none: choose samples with a divisor'})")
    seed = _int("seed", raw.get("seed", 0), 0)
    noise = _list(raw, "noise", ["fresh"])
    for n in noise:
        if n not in NOISE_MODES:
            raise UserError("noise", n, NOISE_MODES)
    guidance = [None]
    if "guidance" in raw:
        from samplerbench.models.guidance import check_weight

        guidance = [check_weight(w) for w in _list(raw, "guidance")]
    dtype = _list(raw, "dtype", ["float32"])
    for d in dtype:
        if d not in DTYPES + ("native",):
            raise UserError("dtype", d, DTYPES + ("native",))
    state_dtype = raw.get("state_dtype")
    if state_dtype is not None and state_dtype not in ("float32", "float64"):
        raise UserError("state_dtype", state_dtype, ["float32", "float64"])
    device = raw.get("device", "cpu")
    if device not in DEVICES:
        raise UserError("device", device, DEVICES)

    for g, source in zip(grids, grid_sources):              # validate grid names and params
        for d in denoisers.values():
            check_grid_spec(g.name, g.params, d, final, source)

    ref = raw.get("reference", {})
    timing = raw.get("timing", {})
    metrics = raw.get("metrics", {})
    for key in ("rtol", "atol"):
        v = ref.get(key, 1e-10)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e-3:
            raise UserError(f"reference.{key}", v, hint="a number in (0, 1e-3)")
    for key in ("weak", "kid"):
        if not isinstance(metrics.get(key, True), bool):
            raise UserError(f"metrics.{key}", metrics[key], ["true", "false"])
    for key in ("nonconv", "error"):          # "analytic": only for exact (analytic) denoisers
        if not (isinstance(metrics.get(key, True), bool) or metrics[key] == "analytic"):
            raise UserError(f"metrics.{key}", metrics[key], ["true", "false", "analytic"])
    from samplerbench.bench.fid import FID_FEATURES, inception_weights

    fid_features = metrics.get("fid_features", "auto")
    if fid_features not in FID_FEATURES:
        raise UserError("metrics.fid_features", fid_features, FID_FEATURES)
    if fid_features == "inception" and any(getattr(d, "dataset", None) == "digits"
                                           for d in denoisers.values()):
        inception_weights()                                 # a clear error before any output
    if metrics.get("kid", False) and not metrics.get("weak", True):
        raise UserError("metrics.kid", True, hint="KID is a weak metric: it needs weak = true")
    threads = raw.get("threads")
    if threads is not None:
        _int("threads", threads, 1)
        if threads > max_threads():
            raise UserError("threads", threads, hint=f"at most {max_threads()} on this machine "
                            f"({os.cpu_count()} CPUs x 4); leave it out for torch's choice")
    compile_ = parse_compile(raw.get("compile", False))
    max_nfe = raw.get("max_nfe")
    if max_nfe is not None:
        _int("max_nfe", max_nfe, 1)
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise UserError("description", desc, hint="a string")
    return Spec(
        name=name, models=models, solvers=solvers, grids=grids, steps=steps,
        tolerances=tolerances, final=final, samples=samples, seed=seed, noise=noise, dtype=dtype,
        state_dtype=state_dtype, guidance=guidance,
        device=device, description=desc,
        ref_rtol=float(ref.get("rtol", 1e-10)), ref_atol=float(ref.get("atol", 1e-10)),
        warmup=_int("timing.warmup", timing.get("warmup", 1), 0),
        repeats=_int("timing.repeats", timing.get("repeats", 3), 1),
        nonconv=metrics.get("nonconv", True), error=metrics.get("error", True), threads=threads,
        weak=metrics.get("weak", True), kid=metrics.get("kid", False), fid_features=fid_features,
        sde_ref_steps=_int("reference.sde_steps", ref.get("sde_steps", 1024), 2),
        compile=compile_, max_nfe=max_nfe, nfe=nfe, blocks=blocks,
        single_over_s=_single_over(timing.get("single_over_s", 1.0)), loaded=denoisers,
    )


def _single_over(v) -> float | None:
    """``[timing] single_over_s``: seconds (> 0), or false for "always warm up and repeat"."""
    if v is False:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise UserError("timing.single_over_s", v, hint="seconds > 0, or false")
    return float(v)


def parse_compile(value, field_name: str = "compile") -> str | None:
    """``compile``: false (not compiled), true (inductor) or a torch.compile backend name."""
    if value is True or value == "true":
        return "inductor"
    if value is False or value is None or value == "false":
        return None
    if value not in COMPILE_BACKENDS:
        raise UserError(field_name, value, ["true", "false", *COMPILE_BACKENDS])
    return value


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    if not p.is_file():
        raise UserError("spec", str(path), hint="file not found")
    try:
        raw = tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"spec {p.name}", "not UTF-8", hint=f"byte {exc.start}: save the spec "
                        "as UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"spec {p.name}", "malformed TOML", hint=str(exc)) from None
    return parse_spec(raw, default_name=p.stem, base=p.parent)


def parse_csv_ints(field_name: str, text: str) -> list[int]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            out.append(int(part))
        except ValueError:
            raise UserError(field_name, text, hint="a comma-separated list of integers, e.g. 4,8,16") from None
    return out


def parse_csv_floats(field_name: str, text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise UserError(field_name, text, hint="a comma-separated list of numbers, e.g. 1e-3,1e-5") from None
    return out
