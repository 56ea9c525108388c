"""Solver overhead: time of one solve vs a hand-written Euler loop with the same number of model
calls, at batch 1024 (issue 3 target: <= 1.10x for fixed-step solvers), on two cheap models:

* ``elementwise``: the exact Gaussian denoiser (about one multiply per element).  The ratio mostly
  measures the arithmetic a method needs on top of its model calls (a 4-step multistep update
  makes more passes over the state than Euler), plus the per-step Python work.
* ``mlp``: a small eps-prediction MLP (2 hidden layers of width 256) behind the checkpoint adapter,
  a few ms per call -- the regime of a small real model.

Each model has its own baseline loop.  Writes results/perf/solver_overhead.md and .json."""

from __future__ import annotations

import json
import math
import platform

import pytest
import torch

from benchmarks.cheap import GaussianDenoiser, euler_by_hand, mlp_denoiser
from benchmarks.conftest import PERF_DIR
from models.schedules import make_schedule
from solvers import get_solver, make_grid
from solvers.registry import available_solvers, solver_class

BATCH, DIM, STEPS = 1024, 64, 32
MODELS = ("elementwise", "mlp")
FIXED = [n for n in available_solvers()
         if not solver_class(n).adaptive and not solver_class(n).stochastic]
_RESULTS: dict[str, dict[str, dict]] = {m: {} for m in MODELS}   # model -> entry -> figures


def _build(model: str):
    sched = make_schedule("edm")
    if model == "elementwise":
        return GaussianDenoiser(sched, DIM)
    return mlp_denoiser(sched, DIM, hidden=256, seed=0)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    dens: dict = {}

    def get(model: str):
        if model not in dens:
            den = _build(model)
            grid = make_grid("karras", den.schedule, STEPS, final="t_min")
            x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0)) * grid.t_start
            dens[model] = (den, grid, x)
        return dens[model]

    yield get
    _write()


def _ratio(model: str, name: str) -> float:
    r = _RESULTS[model].get(name)
    base = r and _RESULTS[model].get(f"baseline_{r['nfe']}")
    return r["median_s"] / base["median_s"] if base else math.nan


def _write():
    if not any(_RESULTS.values()):
        return
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    # JSON: one entry per solver and per baseline NFE, as before (nfe, median_s, ratio on the
    # elementwise model), plus mlp_median_s / mlp_ratio for the MLP model
    out: dict[str, dict] = {}
    for model in MODELS:
        pre = "" if model == "elementwise" else f"{model}_"
        for name, r in _RESULTS[model].items():
            e = out.setdefault(name, {"nfe": r["nfe"]})
            e[f"{pre}median_s"] = r["median_s"]
            if not name.startswith("baseline"):
                e[f"{pre}ratio"] = _ratio(model, name)
    (PERF_DIR / "solver_overhead.json").write_text(
        json.dumps(dict(sorted(out.items())), indent=2, allow_nan=True))

    def ms(model, key):
        r = _RESULTS[model].get(key)
        return f"{1e3 * r['median_s']:.2f}" if r else "-"

    def rt(model, name):
        v = _ratio(model, name)
        return "-" if math.isnan(v) else f"{v:.2f}"

    names = sorted(n for n in out if not n.startswith("baseline"))
    lines = ["# Solver overhead vs a hand-written Euler loop (same NFE)", "",
             f"Batch {BATCH} x {DIM}, float32, EDM schedule, karras grid, {STEPS} steps, "
             f"final = t_min; median of pytest-benchmark rounds. "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads.", "",
             "- **elementwise**: the exact Gaussian denoiser (about one multiply per element): "
             "the ratio is the solver's arithmetic and per-step Python work on top of its "
             "model calls.",
             "- **mlp**: a 2-hidden-layer MLP of width 256 predicting eps, behind the checkpoint "
             "adapter (a small real model).",
             "- baseline: `benchmarks.cheap.euler_by_hand` on the same model with the same "
             "number of model calls.", "",
             "| solver | NFE | elementwise ms | baseline ms | ratio | mlp ms | baseline ms | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        nfe = out[name]["nfe"]
        b = f"baseline_{nfe}"
        lines.append(f"| {name} | {nfe} | {ms('elementwise', name)} | {ms('elementwise', b)} | "
                     f"{rt('elementwise', name)} | {ms('mlp', name)} | {ms('mlp', b)} | "
                     f"{rt('mlp', name)} |")
    (PERF_DIR / "solver_overhead.md").write_text("\n".join(lines) + "\n")


def _nfe_of(solver, den, grid, x):
    return solver.solve(solver.make_dynamics(den), x, grid).nfe


def _run(benchmark, model: str, fn):
    """pytest-benchmark's calibrated rounds on the elementwise model; on the MLP model (a solve
    takes 0.1-1 s) a fixed 5 rounds after one warm-up round."""
    if model == "elementwise":
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    return benchmark.stats.stats.median


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", FIXED)
def test_solver_step_cost(benchmark, setup, model, name):
    den, grid, x = setup(model)
    solver = get_solver(name)
    nfe = _nfe_of(solver, den, grid, x)
    benchmark.group = f"{model} nfe={nfe}"
    median = _run(benchmark, model, lambda: solver.solve(solver.make_dynamics(den), x, grid))
    _RESULTS[model][name] = {"nfe": nfe, "median_s": median}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("nfe", sorted({STEPS * k for k in (1, 2, 3, 4)}))
def test_baseline_euler_loop(benchmark, setup, model, nfe):
    den, grid, x = setup(model)
    ts = make_grid("karras", den.schedule, nfe, final="t_min").t.tolist()
    benchmark.group = f"{model} nfe={nfe}"
    median = _run(benchmark, model, lambda: euler_by_hand(den, x, ts))
    _RESULTS[model][f"baseline_{nfe}"] = {"nfe": nfe, "median_s": median}
