"""torch.compile of the model: eager vs inductor on a shipped checkpoint (issue 7), one model
call at batch 256, and the one-off compilation time.  The harness's warm-up repeats absorb the
compilation; ``wall_s`` of a ``compile = true`` cell is the compiled speed.

Writes results/perf/compile.md and .json.  Inductor on CPU needs a C++ compiler; the suite skips
with the reason when the compilation fails."""

from __future__ import annotations

import json
import math
import platform
import time

import pytest
import torch

from benchmarks.conftest import PERF_DIR
from samplerbench.models.denoiser import CompiledDenoiser
from samplerbench.models.zoo import load_model

MODEL, BATCH = "digits-vp", 256
_R: dict = {}


@pytest.fixture(scope="module")
def setup():
    den = load_model(MODEL)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((BATCH,) + den.data_shape, generator=g)
    t = torch.full((BATCH,), 0.5)
    yield den, x, t
    if {"eager", "inductor"} <= set(_R):
        PERF_DIR.mkdir(parents=True, exist_ok=True)
        speedup = _R["eager"] / _R["inductor"]
        doc = {**_R, "speedup": speedup, "model": MODEL, "batch": BATCH,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
        (PERF_DIR / "compile.json").write_text(json.dumps(doc, indent=2))
        (PERF_DIR / "compile.md").write_text(
            "# torch.compile of the model: eager vs inductor\n\n"
            f"`{MODEL}` (shipped checkpoint), one model call at batch {BATCH}, no grad; median of "
            f"pytest-benchmark rounds. {platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), CPU.\n\n"
            "| what | value |\n|---|---|\n"
            f"| eager, ms per call | {1e3 * _R['eager']:.2f} |\n"
            f"| inductor, ms per call | {1e3 * _R['inductor']:.2f} |\n"
            f"| speed-up | {speedup:.2f}x |\n"
            f"| compilation (first call), s | {_R['compile_s']:.1f} |\n"
            f"| max abs difference of x0_hat | {_R['max_abs_diff']:.2e} |\n")


def test_eager_call(benchmark, setup):
    den, x, t = setup
    with torch.no_grad():
        benchmark(lambda: den(x, t))
    _R["eager"] = benchmark.stats.stats.median


def test_inductor_call(benchmark, setup):
    den, x, t = setup
    comp = CompiledDenoiser(den, "inductor")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            out = comp(x, t)
    except Exception as exc:  # no C++ toolchain, unsupported platform
        pytest.skip(f"inductor could not compile here: {type(exc).__name__}: {exc}")
    _R["compile_s"] = time.perf_counter() - t0
    with torch.no_grad():
        diff = float((out - den(x, t)).abs().max())
        assert math.isfinite(diff)
        _R["max_abs_diff"] = diff
        benchmark(lambda: comp(x, t))
    _R["inductor"] = benchmark.stats.stats.median
