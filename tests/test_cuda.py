"""CUDA paths: synchronised timing, peak memory, the same numbers as on CPU.  Skipped without a
GPU (CI and most development machines have none); nothing here mocks a GPU."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from samplerbench.bench.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (CUDA paths are checked when a GPU is lent)")]


def test_cuda_rows_match_cpu(tmp_path):
    spec = tmp_path / "c.toml"
    spec.write_text(textwrap.dedent("""
        models = ["gmm64", "digits-rf"]
        solvers = ["heun", "dpmpp_2m", "euler_ancestral"]
        steps = [8, 16]
        samples = 32
        dtype = "float32"
        [metrics]
        error = false
        [timing]
        repeats = 3
    """))
    for dev in ("cpu", "cuda"):
        assert main(["run", str(spec), "--out", str(tmp_path / dev), "--device", dev,
                     "--quiet"]) == 0
    rows = {}
    for dev in ("cpu", "cuda"):
        for r in map(json.loads, (tmp_path / dev / "rows.jsonl").read_text().splitlines()):
            rows[(dev, r["model"], r["solver"], r["steps"])] = r
    for (dev, m, s, n), r in rows.items():
        if dev != "cuda":
            continue
        c = rows[("cpu", m, s, n)]
        assert r["status"] == "ok" and r["nfe"] == c["nfe"]
        assert r["peak_mem_bytes"] > 0 and r["wall_s"] > 0
        assert r["nonconv"] == pytest.approx(c["nonconv"], rel=1e-3, abs=1e-5)
        assert r["peak_mem_kind"] == "cuda_allocated"
        assert 0 < r["model_s"] <= r["wall_s"]          # CUDA-event model time inside the wall


def test_cuda_bf16_and_compile(tmp_path):
    """bf16 model with float32 state: finite, error above fp32's; compile = inductor on CUDA
    gives the fp32 samples to float tolerance and is recorded."""
    spec = tmp_path / "p.toml"
    spec.write_text(textwrap.dedent("""
        models = ["digits-ideal"]
        solvers = ["dpmpp_2m"]
        steps = [16]
        samples = 64
        dtype = ["float32", "bfloat16"]
        state_dtype = "float32"
        [metrics]
        nonconv = false
        weak = false
        [reference]
        rtol = 1e-6
        atol = 1e-6
    """))
    assert main(["run", str(spec), "--out", str(tmp_path / "p"), "--device", "cuda",
                 "--quiet"]) == 0
    rows = {r["dtype"]: r for r in map(json.loads,
                                       (tmp_path / "p" / "rows.jsonl").read_text().splitlines())}
    assert rows["bfloat16"]["err_rms"] > rows["float32"]["err_rms"] > 0
    assert main(["run", str(spec), "--out", str(tmp_path / "c"), "--device", "cuda", "--quiet",
                 "--compile"]) == 0
    comp = {r["dtype"]: r for r in map(json.loads,
                                       (tmp_path / "c" / "rows.jsonl").read_text().splitlines())}
    assert comp["float32"]["compile"] == "inductor"
    assert comp["float32"]["err_rms"] == pytest.approx(rows["float32"]["err_rms"], rel=1e-2)
