"""Harness overhead: the wall time of one matrix cell through the runner (initial noise, grid,
dynamics, counting and timing wrappers, peak memory, row assembly; metrics off) against the same
solver called directly and against the bare model-call loop with the same NFE, at batch 1024 on
two cheap models (issue 7 target: <= 5%):

- ``elementwise``: the exact Gaussian denoiser, one multiply per element -- a model that costs
  nothing, so every fixed per-cell cost shows;
- ``mlp``: a 2-hidden-layer MLP (width 256) behind the eps-prediction adapter, the cheapest
  network-shaped model.

Writes results/perf/harness_overhead.md and .json."""

from __future__ import annotations

import json
import platform
import statistics
import time

import pytest
import torch

from samplerbench.bench.runner import Runner, expand_cells
from samplerbench.bench.spec import parse_spec
from benchmarks.cheap import GaussianDenoiser, euler_by_hand, mlp_denoiser
from benchmarks.conftest import PERF_DIR
from samplerbench.models.schedules import make_schedule
from samplerbench.solvers import get_solver, initial_noise, make_grid
from samplerbench.solvers.noise import sample_seeds

BATCH, DIM, STEPS = 1024, 64, 32
MODELS = {"elementwise": lambda: GaussianDenoiser(make_schedule("edm"), DIM),
          "mlp": lambda: mlp_denoiser(make_schedule("edm"), DIM)}
ROUNDS = {"elementwise": 300, "mlp": 40}     # fixed, so the medians of the three rows compare
_R: dict = {}




def _write() -> None:
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    out = {}
    lines = ["# Harness overhead: one matrix cell vs the same solve without the harness\n",
             f"Batch {BATCH} x {DIM}, float32, euler, {STEPS} steps (final = zero, {STEPS} NFE), "
             "metrics off; medians over a fixed number of rounds, the three timed in turn "
             f"within each round. {platform.machine()}, torch {torch.__version__}, 1 thread, "
             "glibc trim/mmap thresholds raised (`make perf`).\n",
             "- **cell**: `Runner.run_cell` end to end (initial noise, grid, wrappers, timing, "
             "peak memory, row).",
             "- **recorded wall_s**: the wall time the harness writes in the row (the timed "
             "solve) -- what a published table reports.",
             "- **direct**: `solver.solve(solver.make_dynamics(model), x, grid)`, no harness.",
             "- **bare loop**: a hand-written Euler loop with the same model calls "
             "(`benchmarks/cheap.py:euler_by_hand`).\n",
             "| model | cell ms | recorded wall_s ms | direct ms | bare loop ms | cell / direct "
             "| wall_s / direct | cell / bare loop |",
             "|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        r = _R.get(m, {})
        if len(r) < 4:
            continue
        ratios = {"cell_over_direct": r["cell"] / r["direct"],
                  "wall_over_direct": r["wall_s"] / r["direct"],
                  "cell_over_bare": r["cell"] / r["bare"]}
        out[m] = {**r, **ratios}
        lines.append(f"| {m} | {1e3 * r['cell']:.2f} | {1e3 * r['wall_s']:.2f} | "
                     f"{1e3 * r['direct']:.2f} | {1e3 * r['bare']:.2f} | "
                     f"{ratios['cell_over_direct']:.3f} | {ratios['wall_over_direct']:.3f} | "
                     f"{ratios['cell_over_bare']:.3f} |")
    if out:
        (PERF_DIR / "harness_overhead.json").write_text(json.dumps(out, indent=2))
        (PERF_DIR / "harness_overhead.md").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    _write()


def _runner(tmp_path, model: str, den):
    spec = parse_spec({"models": ["gmm2d"], "solvers": ["euler"], "steps": [STEPS],
                       "samples": BATCH, "threads": 1,
                       "metrics": {"error": False, "nonconv": False, "weak": False},
                       "timing": {"warmup": 0, "repeats": 1}})
    r = Runner(spec, tmp_path, progress=False)
    r._models["gmm2d"] = den                   # the cheap model under the name in the spec
    return r, expand_cells(spec, "cpu")[0]


@pytest.mark.parametrize("model", list(MODELS))
def test_harness_overhead(benchmark, tmp_path, model):
    """pytest-benchmark times the cell; before each of its rounds (``setup``, untimed by it) the
    direct solve and the bare loop are timed by hand, so the three are interleaved round by round
    and drift of a shared machine cancels out of the ratios."""
    den = MODELS[model]()
    r, cell = _runner(tmp_path, model, den)
    row = r.run_cell(cell)
    assert row["status"] == "ok" and row["nfe"] == STEPS

    g = make_grid("karras", den.schedule, STEPS)
    solver = get_solver("euler")
    x = initial_noise(sample_seeds(0, BATCH), (DIM,), dtype=torch.float32) * g.t_start
    ts = g.t.tolist()[:-1]
    t_last = torch.full((BATCH,), ts[-1], dtype=torch.float32)

    def direct():
        return solver.solve(solver.make_dynamics(den), x, g)

    def bare():
        with torch.no_grad():
            y = euler_by_hand(den, x, ts)
            return den(y, t_last)                         # the denoise step

    times = {"direct": [], "bare": []}

    def others():
        for name, fn in (("direct", direct), ("bare", bare)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    walls = []

    def cell_once():
        walls.append(r.run_cell(cell)["wall_s"])

    benchmark.pedantic(cell_once, setup=others, rounds=ROUNDS[model], warmup_rounds=3)
    _R[model] = {"cell": benchmark.stats.stats.median, "wall_s": statistics.median(walls),
                 "direct": statistics.median(times["direct"]),
                 "bare": statistics.median(times["bare"])}
