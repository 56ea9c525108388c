"""CUDA paths: synchronised timing, peak memory, the same numbers as on CPU.  Skipped without a
GPU (CI and most development machines have none); nothing here mocks a GPU."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from bench.cli import main

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
