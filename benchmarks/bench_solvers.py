"""Solver overhead: time of one solve vs a hand-written Euler loop with the same number of model
calls, at batch 1024 (issue 3 target: <= 1.10x for fixed-step solvers), on two cheap models:

* ``elementwise``: the exact Gaussian denoiser (about one multiply per element).  The ratio mostly
  measures the arithmetic a method needs on top of its model calls (a 4-step multistep update
  makes more passes over the state than Euler), plus the per-step Python work.
* ``mlp``: a small eps-prediction MLP (2 hidden layers of width 256) behind the checkpoint adapter,
  a few ms per call -- the regime of a small real model.

Each solver is timed against its own baseline loop, interleaved round by round.  Writes results/perf/solver_overhead.md and .json."""

from __future__ import annotations

import json
import platform
import statistics
import time

import pytest
import torch

from benchmarks.cheap import GaussianDenoiser, euler_by_hand, mlp_denoiser
from benchmarks.conftest import PERF_DIR
from samplerbench.models.schedules import make_schedule
from samplerbench.solvers import get_solver, make_grid
from samplerbench.solvers.registry import available_solvers, solver_class

BATCH, DIM, STEPS = 1024, 64, 32
MODELS = ("elementwise", "mlp")
ROUNDS = {"elementwise": 60, "mlp": 6}
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


def _write():
    if not any(_RESULTS.values()):
        return
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    # JSON: one entry per solver: nfe, median_s, baseline_s, ratio on the elementwise model, and
    # the same prefixed mlp_ for the MLP model
    out: dict[str, dict] = {}
    for model in MODELS:
        pre = "" if model == "elementwise" else f"{model}_"
        for name, r in _RESULTS[model].items():
            e = out.setdefault(name, {"nfe": r["nfe"]})
            e[f"{pre}median_s"] = r["median_s"]
            e[f"{pre}baseline_s"] = r["baseline_s"]
            e[f"{pre}ratio"] = r["median_s"] / r["baseline_s"]
    (PERF_DIR / "solver_overhead.json").write_text(
        json.dumps(dict(sorted(out.items())), indent=2, allow_nan=True))

    def cols(model, name):
        r = _RESULTS[model].get(name)
        if not r:
            return "- | - | -"
        return (f"{1e3 * r['median_s']:.2f} | {1e3 * r['baseline_s']:.2f} | "
                f"{r['median_s'] / r['baseline_s']:.2f}")

    lines = ["# Solver overhead vs a hand-written Euler loop (same NFE)", "",
             f"Batch {BATCH} x {DIM}, float32, EDM schedule, karras grid, {STEPS} steps, "
             f"final = t_min. Each round times the solve and then its baseline, so the two are "
             f"interleaved and drift of a shared machine cancels out of the ratio; medians over "
             f"{ROUNDS['elementwise']} (elementwise) and {ROUNDS['mlp']} (mlp) rounds. "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s).", "",
             "- **elementwise**: the exact Gaussian denoiser (about one multiply per element): "
             "the ratio is the solver's arithmetic and per-step Python work on top of its "
             "model calls.",
             "- **mlp**: a 2-hidden-layer MLP of width 256 predicting eps, behind the checkpoint "
             "adapter (a small real model).",
             "- baseline: `benchmarks.cheap.euler_by_hand` on the same model with the same "
             "number of model calls.", "",
             "| solver | NFE | elementwise ms | baseline ms | ratio | mlp ms | baseline ms | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(out):
        lines.append(f"| {name} | {out[name]['nfe']} | {cols('elementwise', name)} | "
                     f"{cols('mlp', name)} |")
    (PERF_DIR / "solver_overhead.md").write_text("\n".join(lines) + "\n")


def _nfe_of(solver, den, grid, x):
    return solver.solve(solver.make_dynamics(den), x, grid).nfe


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", FIXED)
def test_solver_step_cost(benchmark, setup, model, name):
    """pytest-benchmark times the solve; before each round (its ``setup``, untimed by it) the
    baseline loop with the same NFE is timed by hand."""
    den, grid, x = setup(model)
    solver = get_solver(name)
    nfe = _nfe_of(solver, den, grid, x)
    ts = make_grid("karras", den.schedule, nfe, final="t_min").t.tolist()
    base: list[float] = []

    def baseline():
        t0 = time.perf_counter()
        euler_by_hand(den, x, ts)
        base.append(time.perf_counter() - t0)

    benchmark.group = f"{model} nfe={nfe}"
    benchmark.pedantic(lambda: solver.solve(solver.make_dynamics(den), x, grid),
                       setup=baseline, rounds=ROUNDS[model], warmup_rounds=2)
    _RESULTS[model][name] = {"nfe": nfe, "median_s": benchmark.stats.stats.median,
                             "baseline_s": statistics.median(base)}
