"""torchrun sharding on CPU (gloo): two processes give the same rows as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

SPEC = """
name = "dist"
models = ["gmm64", "gmm64-rf"]
solvers = ["heun", "dpmpp_2m", { name = "euler_ancestral", eta = 1.0 }, "plug_never"]
steps = [4, 8]
samples = 9
dtype = ["float64", "float32"]
threads = 1
[timing]
warmup = 0
repeats = 1
"""


def _rows(d: Path) -> dict:
    return {r["case_id"]: r for r in map(json.loads, (d / "rows.jsonl").read_text().splitlines())}


# README (Reliability): float32 rows of 1 and 2 processes agree to this relative tolerance
FLOAT32_REL = 1e-5
METRICS = ("err_rms", "err_max", "nonconv", "x_rms", "x_rms_max", "fid", "swd")


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The rows of the spec (float64 and float32 cells) run by 1 process and by 2 (torchrun)."""
    tmp_path = tmp_path_factory.mktemp("dist")
    spec = tmp_path / "d.toml"
    spec.write_text(textwrap.dedent(SPEC).replace(', "plug_never"', ""))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "samplerbench", "run", str(spec), "--out",
                          str(tmp_path / "one"), "--quiet"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "samplerbench", "run", str(spec), "--out",
                          str(tmp_path / "two"), "--quiet"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone wrote the files
    assert (tmp_path / "two" / "run.json").exists()
    assert len((tmp_path / "two" / "rows.jsonl").read_text().splitlines()) == 24
    return _rows(tmp_path / "one"), _rows(tmp_path / "two")


def _pairs(one_and_two, dtype: str):
    a, b = one_and_two
    assert set(a) == set(b) and len(a) == 24
    out = [(r, b[k]) for k, r in a.items() if r["dtype"] == dtype]
    assert len(out) == 12
    for r, s in out:
        assert r["status"] == s["status"] == "ok"
        assert r["nfe"] == s["nfe"] and r["n_samples"] == s["n_samples"] == 9
        assert all((r[m] is None) == (s[m] is None) for m in METRICS)
    return out


def test_torchrun_two_processes_match_one_float64_exactly(one_and_two):
    for r, s in _pairs(one_and_two, "float64"):
        for m in METRICS:
            assert s[m] == r[m], (r["solver"], r["model"], m)
        assert s["x_fingerprint"] == r["x_fingerprint"]


def test_torchrun_two_processes_match_one_float32_within_the_readme_tolerance(one_and_two):
    """float32 cells: batch-size-dependent kernels may change the last bits; the README states
    the tolerance (FLOAT32_REL) at which rows of different process counts are compared."""
    for r, s in _pairs(one_and_two, "float32"):
        assert r["state_dtype"] == s["state_dtype"] == "float32"
        for m in METRICS:
            if r[m] is not None:
                assert s[m] == pytest.approx(r[m], rel=FLOAT32_REL, abs=1e-12), (r["solver"], m)


def test_torchrun_digits_fid_and_kid_match_one_process(tmp_path):
    """FID / KID of a digits model under torchrun: rank 0 computes them on the gathered samples
    (no collective inside torchmetrics, which would wait forever for the other rank)."""
    spec = tmp_path / "f.toml"
    spec.write_text(textwrap.dedent("""
        name = "distfid"
        models = ["digits-ideal"]
        solvers = ["dpmpp_2m"]
        steps = [4]
        samples = 128
        threads = 1
        [metrics]
        error = false
        nonconv = false
        kid = true
        [timing]
        warmup = 0
        repeats = 1
    """))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    runs = {}
    for name, cmd in (("one", [sys.executable, "-m", "samplerbench"]),
                      ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node=2", "-m", "samplerbench"])):
        p = subprocess.run(cmd + ["run", str(spec), "--out", str(tmp_path / name), "--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = next(iter(_rows(tmp_path / name).values()))
    one, two = runs["one"], runs["two"]
    assert one["status"] == two["status"] == "ok" and one["fid"] > 0
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-4)
    assert two["kid"] == pytest.approx(one["kid"], rel=1e-3, abs=1e-6)
