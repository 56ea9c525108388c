"""Noise modes: the cost of a Brownian path against fresh draws, per Euler-Maruyama step at batch
1024 on gmm64 (issue 4 target: brownian <= 1.3x fresh per step).

Each round is a full ``euler_maruyama`` solve (karras grid, final = t_min; the noise source is
built inside the round, so the path's cold start is included); per-step time = round / steps.
Also timed: the noise source alone over the same grid.  Writes results/perf/noise_modes.md and
.json."""

from __future__ import annotations

import json
import platform

import pytest
import torch

from benchmarks.conftest import PERF_DIR
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid, make_noise
from samplerbench.solvers.noise import sample_seeds

BATCH, STEPS = 1024, 32
DTYPES = {"float64": torch.float64, "float32": torch.float32}
_RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def setup():
    den = load_model("gmm64")
    grid = make_grid("karras", den.schedule, STEPS, final="t_min")
    seeds = sample_seeds(0, BATCH)
    z = initial_noise(seeds, den.data_shape) * grid.t_start
    yield den, grid, seeds, z
    _write()


def _write():
    if not _RESULTS:
        return
    PERF_DIR.mkdir(parents=True, exist_ok=True)
    (PERF_DIR / "noise_modes.json").write_text(json.dumps(_RESULTS, indent=2))
    lines = ["# Noise modes: fresh vs brownian, one Euler-Maruyama step", "",
             f"gmm64 (64-D, 10 full-covariance components), batch {BATCH}, karras grid, {STEPS} "
             f"steps, final = t_min; median of pytest-benchmark rounds, per step. "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads.", "",
             "| dtype | what | fresh ms/step | brownian ms/step | brownian / fresh |",
             "|---|---|---|---|---|"]
    for dtype in DTYPES:
        for what in ("em_step", "noise_only"):
            f = _RESULTS.get(f"{what}-{dtype}-fresh")
            b = _RESULTS.get(f"{what}-{dtype}-brownian")
            if f and b:
                ratio = b["per_step_s"] / f["per_step_s"]
                lines.append(f"| {dtype} | {what} | {1e3 * f['per_step_s']:.2f} | "
                             f"{1e3 * b['per_step_s']:.2f} | {ratio:.2f} |")
    (PERF_DIR / "noise_modes.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["fresh", "brownian"])
def test_em_step_cost(benchmark, setup, mode, dtype):
    den, grid, seeds, z = setup
    x = z.to(DTYPES[dtype])
    solver = get_solver("euler_maruyama")
    dyn = solver.make_dynamics(den)

    def run():
        src = make_noise(mode, seeds, den.data_shape, grid, dtype=x.dtype)
        return solver.solve(dyn, x, grid, src)

    benchmark.group = f"em_step {dtype}"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _RESULTS[f"em_step-{dtype}-{mode}"] = {"per_step_s": benchmark.stats.stats.median / STEPS}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["fresh", "brownian"])
def test_noise_only_cost(benchmark, setup, mode, dtype):
    den, grid, seeds, _ = setup
    ts = grid.t.tolist()

    def run():
        src = make_noise(mode, seeds, den.data_shape, grid, dtype=DTYPES[dtype])
        for t0, t1 in zip(ts[:-1], ts[1:]):
            src(t0, t1)

    benchmark.group = f"noise_only {dtype}"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _RESULTS[f"noise_only-{dtype}-{mode}"] = {"per_step_s": benchmark.stats.stats.median / STEPS}
