"""The harness on stochastic cells: strong error against the same solver at many steps on the
same Brownian path (brownian mode only), weak error for analytic models, the reference named."""

from __future__ import annotations

import json
import textwrap

import pytest

from samplerbench.bench.cli import main


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("sde")
    spec = d / "s.toml"
    spec.write_text(textwrap.dedent("""
        models = ["gmm2d"]
        solvers = ["heun", "euler_maruyama"]
        steps = [8, 32, 128]
        samples = 64
        noise = ["fresh", "brownian"]
        dtype = "float64"
        threads = 1
        [reference]
        sde_steps = 1024
        [timing]
        repeats = 1
    """))
    assert main(["run", str(spec), "--out", str(d / "o"), "--quiet"]) == 0
    return [json.loads(line) for line in (d / "o" / "rows.jsonl").read_text().splitlines()]


def _get(rows, solver, noise, steps):
    return next(r for r in rows if r["solver"] == solver and r["noise"] == noise
                and r["steps"] == steps)


def test_strong_error_only_on_the_brownian_path(rows):
    for n in (8, 32, 128):
        b = _get(rows, "euler_maruyama", "brownian", n)
        f = _get(rows, "euler_maruyama", "fresh", n)
        assert b["err_rms"] is not None and f["err_rms"] is None
        assert b["reference"] == "euler_maruyama at 1024 steps on the same Brownian path"
    errs = [_get(rows, "euler_maruyama", "brownian", n)["err_rms"] for n in (8, 32, 128)]
    assert errs[0] > errs[1] > errs[2]
    assert _get(rows, "heun", None, 8)["reference"].startswith("dopri8 float64")


def test_nonconv_brownian_falls_fresh_does_not(rows):
    b = [_get(rows, "euler_maruyama", "brownian", n)["nonconv"] for n in (32, 128)]
    f = [_get(rows, "euler_maruyama", "fresh", n)["nonconv"] for n in (32, 128)]
    assert b[1] < 0.5 * b[0]
    assert f[1] > 0.5 * f[0] and f[1] > 3 * b[1]


def test_weak_error_for_analytic_models(rows):
    for r in rows:
        assert r["fid_features"] == "data:exact-moments" and r["fid"] >= 0 and r["swd"] > 0
    w = [_get(rows, "euler_maruyama", "fresh", n)["fid"] for n in (8, 128)]
    assert w[1] < w[0]
