"""Harness at scale (issue 7): counter-based initial noise, torch.compile of the model, peak
memory per cell, model-time accounting."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samplerbench.bench.metrics import PeakMemory
from samplerbench.bench.runner import run_spec
from samplerbench.bench.spec import parse_spec
from samplerbench.models.denoiser import CompiledDenoiser, TimedDenoiser
from samplerbench.models.zoo import load_model
from samplerbench.solvers import initial_noise
from samplerbench.solvers.noise import sample_seeds


def test_initial_noise_is_standard_normal_and_per_sample():
    z = initial_noise(sample_seeds(0, 2000), (64,)).double()
    n = z.numel()
    assert z.dtype == torch.float64 and z.shape == (2000, 64)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    corr = torch.corrcoef(z.T) - torch.eye(64, dtype=torch.float64)
    assert float(corr.abs().max()) < 6 / math.sqrt(z.shape[0])
    # sample i depends on seed i alone: batch, order, shape and dtype do not change it
    one = initial_noise([1234], (1, 8, 8))
    batch = initial_noise(sample_seeds(1200, 64), (1, 8, 8))
    torch.testing.assert_close(batch[34:35], one, rtol=0, atol=0)
    rev = initial_noise(list(reversed(sample_seeds(1200, 64))), (64,))
    torch.testing.assert_close(rev.flip(0), batch.reshape(64, 64), rtol=0, atol=0)
    f32 = initial_noise([1234], (1, 8, 8), dtype=torch.float32)
    torch.testing.assert_close(f32.double(), one, rtol=0, atol=0)
    # initial noise and the noise streams of the same seeds are different numbers
    from samplerbench.solvers.noise import FreshNoise

    assert not torch.equal(FreshNoise([1234], (1, 8, 8))(1.0, 0.5), one)


def test_compiled_denoiser_matches_eager():
    den = load_model("moons-vp")
    x = torch.randn(16, *den.data_shape)
    t = torch.full((16,), 0.5)
    comp = CompiledDenoiser(den, "aot_eager")
    torch.testing.assert_close(comp(x, t), den(x, t), rtol=1e-5, atol=1e-6)
    assert comp.schedule is den.schedule and comp.data_shape == den.data_shape


def _spec(**extra):
    return parse_spec({"models": ["gmm2d"], "solvers": ["euler", "dpmpp_2m"], "steps": [8],
                       "samples": 32, "threads": 1, "timing": {"warmup": 1, "repeats": 1},
                       "metrics": {"nonconv": False, "weak": False}, **extra})


def test_compile_is_recorded_and_gives_the_same_samples(tmp_path):
    eager = {r["solver"]: r for r in map(json.loads, _rows(tmp_path / "e", _spec()))}
    comp = {r["solver"]: r for r in map(json.loads,
                                        _rows(tmp_path / "c", _spec(compile="aot_eager")))}
    for name in ("euler", "dpmpp_2m"):
        e, c = eager[name], comp[name]
        assert e["status"] == c["status"] == "ok"
        assert e["compile"] is None and c["compile"] == "aot_eager"
        assert e["case_id"] != c["case_id"]
        assert c["nfe"] == e["nfe"] == 8             # the step into t = 0 is one of the 8
        assert math.isclose(c["err_rms"], e["err_rms"], rel_tol=1e-4)


def _rows(out, spec):
    run_spec(spec, out, progress=False)
    return (out / "rows.jsonl").read_text().splitlines()


def test_peak_memory_window_sees_an_allocation_and_resets():
    pm = PeakMemory(torch.device("cpu"))
    pm.start()
    big = torch.ones(64 * 1024 * 1024 // 8 * 4, dtype=torch.float64)    # 256 MiB, touched
    peak1, kind = pm.stop()
    del big
    if kind != "cpu_rss":
        pytest.skip(f"no resettable peak RSS on this platform (kind {kind})")
    pm.start()
    small = torch.ones(1024)
    peak2, _ = pm.stop()
    del small
    assert peak1 - peak2 > 200 * 1024 * 1024


def test_rows_record_cpu_peak_memory(tmp_path):
    rows = [json.loads(r) for r in _rows(tmp_path / "m", _spec())]
    import resource

    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for r in rows:
        assert r["peak_mem_kind"] in ("cpu_rss", "cpu_rss_lifetime")
        assert 10 * 2**20 < r["peak_mem_bytes"] <= 1.05 * lifetime


def test_timed_denoiser_counts_only_model_time():
    import time

    den = load_model("moons-vp")
    tden = TimedDenoiser(den)
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    t0 = time.perf_counter()
    for _ in range(5):
        tden(x, t)
    outer = time.perf_counter() - t0
    inner = tden.seconds
    assert 0 < inner <= outer
    tden.seconds = 0.0
    assert tden.seconds == 0.0


def test_native_dtype_and_analytic_only_metrics(tmp_path):
    """dtype = "native": float64 for an analytic model, float32 for a trained network;
    error / nonconv = "analytic": the reference error and the 2N-step solve only where the
    denoiser is exact."""
    spec = parse_spec({"models": ["gmm2d", "moons-vp"], "solvers": ["heun"], "steps": [8],
                       "samples": 16, "threads": 1, "dtype": "native",
                       "timing": {"warmup": 0, "repeats": 1},
                       "metrics": {"error": "analytic", "nonconv": "analytic", "weak": False}})
    rows = {r["model"]: r for r in map(json.loads, _rows(tmp_path / "n", spec))}
    g, m = rows["gmm2d"], rows["moons-vp"]
    assert g["dtype"] == g["state_dtype"] == "float64"
    assert m["dtype"] == m["state_dtype"] == "float32"
    assert g["err_rms"] > 0 and g["nonconv"] > 0 and g["reference"].startswith("dopri8")
    assert m["err_rms"] is None and m["nonconv"] is None and m["status"] == "ok"


@pytest.mark.parametrize("metrics", [{"error": "trained"}, {"nonconv": 1}])
def test_metric_switch_rejects_other_values(metrics):
    from samplerbench.models.errors import UserError

    with pytest.raises(UserError, match="metrics"):
        parse_spec({"models": ["gmm2d"], "solvers": ["heun"], "steps": [8], "metrics": metrics})


def test_nfe_budget_stops_a_runaway_solve_and_a_larger_budget_recomputes_it(tmp_path):
    """max_nfe: a solve that needs more model calls is stopped and recorded as failed with the
    budget in the row; the other cells are unaffected; a rerun with the same budget reuses the
    row, a rerun with a larger one computes the cell again (one row per cell for readers)."""
    from samplerbench.bench.runner import rows as run_rows
    from samplerbench.bench.store import read_rows

    raw = {"models": ["gmm2d"], "solvers": ["euler", "dopri5"], "steps": [8],
           "tolerances": [1e-9], "samples": 8, "threads": 1,
           "timing": {"warmup": 0, "repeats": 1},
           "metrics": {"error": False, "nonconv": False, "weak": False}}
    out = tmp_path / "b"
    s1 = run_spec(parse_spec({**raw, "max_nfe": 40}), out, progress=False)
    got = {r["solver"]: r for r in run_rows(out)}
    assert got["euler"]["status"] == "ok" and got["euler"]["nfe"] == 8
    assert got["euler"]["max_nfe"] == 40
    d = got["dopri5"]
    assert d["status"] == "failed" and d["message"].startswith("NFE budget: stopped after 40")
    t_at = float(d["message"].split("at t = ")[1].split()[0])     # how far the solve got
    assert 0.002 - 1e-12 <= t_at <= 80.0 and "from 80 to 0.002" in d["message"]
    assert d["max_nfe"] == 40 and d["nfe"] is None
    assert s1["computed"] == 2

    s2 = run_spec(parse_spec({**raw, "max_nfe": 40}), out, progress=False)
    assert s2["computed"] == 0                       # same budget: the failure stands

    s3 = run_spec(parse_spec(raw), out, progress=False)      # no cap: dopri5 finishes
    assert s3["computed"] == 1
    assert len(read_rows(out / "rows.jsonl")) == 3               # append-only store
    got = {r["solver"]: r for r in run_rows(out)}
    assert len(run_rows(out)) == 2
    assert got["dopri5"]["status"] == "ok" and got["dopri5"]["nfe"] > 40
    assert got["dopri5"]["max_nfe"] is None
