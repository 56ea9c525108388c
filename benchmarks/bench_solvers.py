"""Solver overhead: time of one solve vs a hand-written Euler loop with the same number of model
calls, on a cheap model at batch 1024 (issue 3 target: <= 1.10x for fixed-step solvers).

Writes results/perf/solver_overhead.md and .json."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from benchmarks.cheap import GaussianDenoiser, euler_by_hand
from benchmarks.conftest import PERF_DIR
from models.schedules import make_schedule
from solvers import get_solver, make_grid
from solvers.registry import available_solvers, solver_class

BATCH, DIM, STEPS = 1024, 64, 32
FIXED = [n for n in available_solvers()
         if not solver_class(n).adaptive and not solver_class(n).stochastic]
_RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    den = GaussianDenoiser(make_schedule("edm"), DIM)
    grid = make_grid("karras", den.schedule, STEPS, final="t_min")
    x = torch.randn(BATCH, DIM) * grid.t_start
    yield den, grid, x
    _write()


def _write():
    if not _RESULTS:
        return
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, r in sorted(_RESULTS.items()):
        if name.startswith("baseline"):
            continue
        base = _RESULTS.get(f"baseline_{r['nfe']}")
        if base:
            r["ratio"] = r["median_s"] / base["median_s"]
        rows.append((name, r))
    (PERF_DIR / "solver_overhead.json").write_text(json.dumps(_RESULTS, indent=2))
    lines = [f"# Solver overhead vs a hand-written Euler loop (same NFE)", "",
             f"Cheap exact Gaussian denoiser, batch {BATCH} x {DIM}, float32, EDM schedule, "
             f"karras grid, {STEPS} steps, final = t_min; median of pytest-benchmark rounds. "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads.", "",
             "| solver | NFE | median ms | baseline ms (same NFE) | ratio |", "|---|---|---|---|---|"]
    for name, r in rows:
        base = _RESULTS.get(f"baseline_{r['nfe']}", {})
        lines.append(f"| {name} | {r['nfe']} | {1e3 * r['median_s']:.2f} | "
                     f"{1e3 * base.get('median_s', float('nan')):.2f} | {r.get('ratio', float('nan')):.2f} |")
    (PERF_DIR / "solver_overhead.md").write_text("\n".join(lines) + "\n")


def _nfe_of(solver, den, grid, x):
    return solver.solve(solver.make_dynamics(den), x, grid).nfe


@pytest.mark.parametrize("name", FIXED)
def test_solver_step_cost(benchmark, setup, name):
    den, grid, x = setup
    solver = get_solver(name)
    nfe = _nfe_of(solver, den, grid, x)
    benchmark.group = f"nfe={nfe}"
    benchmark(lambda: solver.solve(solver.make_dynamics(den), x, grid))
    _RESULTS[name] = {"nfe": nfe, "median_s": benchmark.stats.stats.median}


@pytest.mark.parametrize("nfe", sorted({STEPS * k for k in (1, 2, 3, 4)}))
def test_baseline_euler_loop(benchmark, setup, nfe):
    den, grid, x = setup
    ts = make_grid("karras", den.schedule, nfe, final="t_min").t.tolist()
    benchmark.group = f"nfe={nfe}"
    benchmark(lambda: euler_by_hand(den, x, ts))
    _RESULTS[f"baseline_{nfe}"] = {"nfe": nfe, "median_s": benchmark.stats.stats.median}
