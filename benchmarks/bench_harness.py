"""Harness overhead: the wall time of one matrix cell through the runner (initial noise, grid,
dynamics, counting and timing wrappers, row assembly; metrics off) against the bare model-call
loop with the same NFE, on a cheap model at batch 1024 (issue 7 target: <= 5%).

Writes results/perf/harness_overhead.md and .json."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from bench.runner import Runner, expand_cells
from bench.spec import parse_spec
from benchmarks.cheap import GaussianDenoiser, euler_by_hand
from benchmarks.conftest import PERF_DIR
from models.schedules import make_schedule
from solvers import make_grid

BATCH, DIM, STEPS = 1024, 64, 32
_R: dict = {}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    spec = parse_spec({"models": ["gmm2d"], "solvers": ["euler"], "steps": [STEPS],
                       "samples": BATCH, "threads": 1,
                       "metrics": {"error": False, "nonconv": False, "weak": False},
                       "timing": {"warmup": 0, "repeats": 1}})
    r = Runner(spec, tmp_path_factory.mktemp("h"), progress=False)
    r._models["gmm2d"] = GaussianDenoiser(make_schedule("edm"), DIM)   # the cheap model
    yield r, expand_cells(spec, "cpu")[0]
    if len(_R) == 3:
        PERF_DIR.mkdir(parents=True, exist_ok=True)
        ratio = _R["cell"] / _R["bare"]
        harness = _R["cell"] / _R["direct"]
        (PERF_DIR / "harness_overhead.json").write_text(json.dumps(
            {**_R, "ratio": ratio, "harness_ratio": harness}, indent=2))
        (PERF_DIR / "harness_overhead.md").write_text(
            "# Harness overhead: one matrix cell vs the bare model-call loop\n\n"
            f"Cheap exact Gaussian denoiser, batch {BATCH} x {DIM}, euler, {STEPS} steps "
            f"(final = zero), metrics off; median of pytest-benchmark rounds. "
            f"{platform.machine()}, torch {torch.__version__}, 1 thread.\n\n"
            "| what | median ms |\n|---|---|\n"
            f"| runner.run_cell (x_init, grid, solve, timing, row) | {1e3 * _R['cell']:.2f} |\n"
            f"| the same solver called directly (solver.solve, no harness) | "
            f"{1e3 * _R['direct']:.2f} |\n"
            f"| bare hand-written Euler loop, same NFE | {1e3 * _R['bare']:.2f} |\n"
            f"| **harness overhead**: cell / direct solve | {harness:.3f} |\n"
            f"| cell / bare loop | {ratio:.3f} |\n")


def test_cell_through_the_runner(benchmark, runner):
    r, cell = runner
    row = r.run_cell(cell)
    assert row["status"] == "ok" and row["nfe"] == STEPS
    benchmark(lambda: r.run_cell(cell))
    _R["cell"] = benchmark.stats.stats.median


def test_bare_loop(benchmark):
    den = GaussianDenoiser(make_schedule("edm"), DIM)
    g = make_grid("karras", den.schedule, STEPS)
    ts = g.t.tolist()[:-1]
    x = torch.randn(BATCH, DIM) * ts[0]

    def bare():
        y = euler_by_hand(den, x, ts)
        return den(y, torch.full((BATCH,), ts[-1], dtype=torch.float64))   # the denoise step

    benchmark(bare)
    _R["bare"] = benchmark.stats.stats.median


def test_direct_solve(benchmark):
    """The same solver on the same model and grid without the harness: the harness's own cost
    is the cell's time over this one."""
    from solvers import get_solver, initial_noise
    from solvers.noise import sample_seeds

    den = GaussianDenoiser(make_schedule("edm"), DIM)
    g = make_grid("karras", den.schedule, STEPS)
    solver = get_solver("euler")
    x = initial_noise(sample_seeds(0, BATCH), (DIM,), dtype=torch.float32) * g.t_start

    benchmark(lambda: solver.solve(solver.make_dynamics(den), x, g))
    _R["direct"] = benchmark.stats.stats.median
