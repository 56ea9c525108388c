"""End-to-end CLI tests: list, run (spec and ad hoc), sample, report, bad input, plugins,
failure isolation and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN_MODULE = '''
from dataclasses import dataclass
import torch
from samplerbench.solvers import Solver


@dataclass(frozen=True)
class PlugEuler(Solver):
    """Euler written by a third party (same numerics as the built-in)."""
    name = "plug_euler"
    kind = "ode"
    order = 1.0
    stages = 1
    reference = "a plugin"

    def step(self, dynamics, t0, t1, x, state, noise):
        return x + (t1 - t0) * dynamics.velocity(t0, x), state


@dataclass(frozen=True)
class PlugDiverge(Solver):
    """Blows up after one model call."""
    name = "plug_diverge"
    order = 1.0

    def step(self, dynamics, t0, t1, x, state, noise):
        return dynamics.velocity(t0, x) * float("inf"), state


@dataclass(frozen=True)
class PlugOOM(Solver):
    """Euler that runs out of memory above batch 4 (as a GPU would)."""
    name = "plug_oom"
    order = 1.0

    def step(self, dynamics, t0, t1, x, state, noise):
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x + (t1 - t0) * dynamics.velocity(t0, x), state


@dataclass(frozen=True)
class PlugRaise(Solver):
    """Raises inside step."""
    name = "plug_raise"
    order = 1.0

    def step(self, dynamics, t0, t1, x, state, noise):
        raise RuntimeError("plugin bug")
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A throwaway distribution: a module and a *.dist-info with entry_points.txt."""
    d = tmp_path_factory.mktemp("plugin")
    (d / "sb_plugin_mod.py").write_text(PLUGIN_MODULE)
    info = d / "sb_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[samplerbench.solvers]\n"
        "plug_euler = sb_plugin_mod:PlugEuler\n"
        "plug_diverge = sb_plugin_mod:PlugDiverge\n"
        "plug_raise = sb_plugin_mod:PlugRaise\n"
        "plug_oom = sb_plugin_mod:PlugOOM\n")
    return d


def sb(*args, plugin: Path | None = None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if plugin is not None:
        env["PYTHONPATH"] = str(plugin) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "samplerbench", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd or ROOT)


def write_spec(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def rows_of(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines() if line]


# ------------------------------------------------------------------------------------------------

def test_list_shows_builtins():
    r = sb("list")
    assert r.returncode == 0, r.stderr
    for name in ("euler", "heun", "midpoint", "rk4", "ddim", "euler_ancestral", "euler_maruyama",
                 "dopri8", "gmm2d", "gmm64", "gmm64-rf", "karras", "uniform", "logsnr"):
        assert name in r.stdout


def test_plugin_is_listed_and_runs_in_matrix(plugin_path, tmp_path):
    r = sb("list", "solvers", plugin=plugin_path)
    assert r.returncode == 0, r.stderr
    assert "plug_euler" in r.stdout and "a plugin" in r.stdout
    out = tmp_path / "out"
    r = sb("run", "--models", "gmm2d", "--solvers", "plug_euler,euler", "--steps", "4,8",
           "--samples", "8", "--dtype", "float64", "--out", out, "--quiet", plugin=plugin_path)
    assert r.returncode == 0, r.stderr
    rows = {(x["solver"], x["steps"]): x for x in rows_of(out)}
    assert len(rows) == 4 and all(x["status"] == "ok" for x in rows.values())
    # the plugin is the same algorithm as the built-in Euler: same result, same counted NFE
    for n in (4, 8):
        assert rows[("plug_euler", n)]["nfe"] == rows[("euler", n)]["nfe"] == n
        assert rows[("plug_euler", n)]["err_rms"] == pytest.approx(rows[("euler", n)]["err_rms"],
                                                                   rel=1e-12)


def test_failure_isolation(plugin_path, tmp_path):
    out = tmp_path / "out"
    r = sb("run", "--models", "gmm2d", "--solvers", "plug_diverge,plug_raise,heun", "--steps",
           "4,8", "--samples", "4", "--out", out, "--quiet", plugin=plugin_path)
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    status = {(x["solver"], x["steps"]): x["status"] for x in rows}
    assert status[("plug_diverge", 4)] == status[("plug_diverge", 8)] == "diverged"
    assert status[("plug_raise", 4)] == "failed"
    assert "plugin bug" in next(x["message"] for x in rows if x["solver"] == "plug_raise")
    assert status[("heun", 4)] == status[("heun", 8)] == "ok"
    assert "2 diverged in the matrix" in r.stdout and "1 failed" not in r.stdout
    # --strict: the same matrix (all cells reused) exits 1 because of the bad cells
    r = sb("run", "--models", "gmm2d", "--solvers", "plug_diverge,plug_raise,heun", "--steps",
           "4,8", "--samples", "4", "--out", out, "--quiet", "--strict", plugin=plugin_path)
    assert r.returncode == 1 and "6 reused" in r.stdout
    # the report still renders and names the bad cells
    r = sb("report", out, "--format", "md,csv")
    assert r.returncode == 0, r.stderr
    text = (out / "report" / "README.md").read_text()
    assert "diverged" in text and "failed" in text


def test_out_of_memory_is_retried_at_half_batch(plugin_path, tmp_path):
    out = tmp_path / "out"
    r = sb("run", "--models", "gmm2d", "--solvers", "plug_oom,euler", "--steps", "4",
           "--samples", "8", "--dtype", "float64", "--out", out, "--quiet", plugin=plugin_path)
    assert r.returncode == 0, r.stderr
    rows = {x["solver"]: x for x in rows_of(out)}
    assert rows["plug_oom"]["status"] == "ok" and "2 chunks" in rows["plug_oom"]["message"]
    # the same samples as the one-batch Euler: per-sample seeds make chunking invisible
    assert rows["plug_oom"]["err_rms"] == pytest.approx(rows["euler"]["err_rms"], rel=1e-12)
    r = sb("run", "--models", "gmm2d", "--solvers", "plug_oom", "--steps", "4",
           "--samples", "16", "--out", tmp_path / "o2", "--quiet", plugin=plugin_path)
    (row,) = rows_of(tmp_path / "o2")
    assert row["status"] == "failed" and "OutOfMemoryError" in row["message"]


def test_row_schema_and_provenance(tmp_path):
    out = tmp_path / "out"
    r = sb("run", "--models", "gmm64", "--solvers", "heun,euler_ancestral", "--steps", "4",
           "--samples", "4", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    from samplerbench.bench.store import ROW_KEYS

    rows = rows_of(out)
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["n_samples"] == 4 and row["seed"] == 0 and row["device"] == "cpu"
        assert row["torch_version"] and row["wall_s"] > 0
        assert 0 < row["model_s"] <= row["wall_s"] and row["overhead_s"] >= 0
    heun = next(x for x in rows if x["solver"] == "heun")
    assert heun["nfe"] == 7 and heun["forward_passes"] == 7 and heun["noise"] is None
    assert heun["err_rms"] > 0 and heun["nonconv"] > 0
    anc = next(x for x in rows if x["solver"] == "euler_ancestral")
    assert anc["noise"] == "fresh" and anc["err_rms"] is None and anc["solver_params"]["eta"] == 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["spec"]["models"] == ["gmm64"] and run["environment"]["torch"]


def test_sample_npz(tmp_path):
    f = tmp_path / "s.npz"
    r = sb("sample", "gmm2d", "heun", "--steps", "18", "--n", "16", "--seed", "3", "--out", f)
    assert r.returncode == 0, r.stderr
    d = np.load(f)
    assert d["x_init"].shape == (16, 2) and d["x"].shape == (16, 2)
    assert int(d["nfe"]) == 35 and d["t"].dtype == np.float64 and d["t"][-1] == 0.0
    assert np.isfinite(d["x"]).all()
    # per-sample seeds: a batch of 4 starting at seed 5 equals rows 2..5 of the batch above
    f2 = tmp_path / "s2.npz"
    r = sb("sample", "gmm2d", "heun", "--steps", "18", "--n", "4", "--seed", "5", "--out", f2)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(f2)["x_init"], d["x_init"][2:6])
    np.testing.assert_allclose(np.load(f2)["x"], d["x"][2:6], rtol=1e-5, atol=1e-6)
    # stochastic solver with an option and brownian noise
    f3 = tmp_path / "s3.npz"
    r = sb("sample", "gmm64", "euler_ancestral", "--steps", "8", "--n", "4", "--noise", "brownian",
           "--solver-opt", "eta=0.5", "--out", f3)
    assert r.returncode == 0, r.stderr
    assert np.load(f3)["x"].shape == (4, 1, 8, 8)


@pytest.mark.parametrize("args,field", [
    (["run", "--models", "nope", "--solvers", "euler", "--steps", "4"], "model"),
    (["run", "--models", "gmm2d", "--solvers", "nope", "--steps", "4"], "solver"),
    (["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4", "--grid", "nope"], "grid"),
    (["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "0"], "steps"),
    (["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4,x"], "--steps"),
    (["sample", "gmm2d", "euler", "--steps", "0", "--out", "x.npz"], "steps"),
    (["sample", "gmm2d", "euler", "--steps", "4", "--solver-opt", "foo=1", "--out", "x.npz"],
     "solver parameter"),
    (["run", "missing.toml"], "spec"),
])
def test_bad_input_exits_2_with_one_line(args, field, tmp_path, capsys, monkeypatch):
    from samplerbench.bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert field in lines[0]
    assert not list(tmp_path.glob("results"))


def test_unknown_name_lists_choices_in_a_real_process():
    r = sb("run", "--models", "gmm2d", "--solvers", "eulr", "--steps", "4")
    assert r.returncode == 2 and "valid choices" in r.stderr and "heun" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("body,field", [
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nbogus = 1\n', "spec key"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = []\n', "steps"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nsamples = -1\n', "samples"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nnoise = ["pink"]\n', "noise"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ndtype = "float8"\n', "dtype"),
    ('models = ["gmm2d"]\nsolvers = [{name = "heun", foo = 1}]\nsteps = [4]\n', "solver parameter"),
    ('models = ["gmm2d"\nsolvers = ["euler"]\n', "malformed TOML"),
    ('solvers = ["euler"]\nsteps = [4]\n', "models"),
    ('models = ["gmm2d"]\nsolvers = ["dopri5"]\ntolerances = [2.0]\n', "tolerances"),
    ('models = ["gmm2d"]\nsolvers = ["dopri5"]\n', "tolerances"),
    ('models = ["gmm2d"]\nsolvers = [{name = "dopri5", rtol = 1e-3}]\ntolerances = [1e-3]\n',
     "solvers.dopri5"),
    ('models = []\nsolvers = ["euler"]\nsteps = [4]\n', "models"),
    ('models = [1]\nsolvers = ["euler"]\nsteps = [4]\n', "models"),
    ('models = ["gmm2d"]\nsolvers = []\nsteps = [4]\n', "solvers"),
    ('models = ["gmm2d"]\nsolvers = [{eta = 1.0}]\nsteps = [4]\n', "solvers"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ngrids = ["nope"]\n', "grid"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ngrids = [{name = "karras", rho = "x"}]\n',
     "rho"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ngrids = [{name = "karras", nu = 1}]\n',
     "grid parameter"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [0]\n', "steps"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [1.5]\n', "steps"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = ["4"]\n', "steps"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nseed = -1\n', "seed"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nseed = "a"\n', "seed"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nfinal = "end"\n', "final"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ndevice = "tpu"\n', "device"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nthreads = 0\n', "threads"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n[reference]\nrtol = 0.1\n', "reference.rtol"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n[reference]\nfoo = 1\n', "reference key"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n[timing]\nrepeats = 0\n', "timing.repeats"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n[metrics]\nnonconv = "yes"\n', "metrics.nonconv"),
    ('name = "a/b"\nmodels = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n', "name"),
    ('description = 3\nmodels = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\n', "description"),
    ('models = ["gmm2d"]\nsolvers = ["dopri5"]\ntolerances = ["x"]\n', "tolerances"),
    ('models = ["gmm2d"]\nsolvers = [{name = "euler_ancestral", eta = -1.0}]\nsteps = [4]\n', "eta"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ntiming = 3\n', "timing"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nsamples = true\n', "samples"),
    ('models = ["gmm:nope.json"]\nsolvers = ["euler"]\nsteps = [4]\n', "gmm:nope.json"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ncompile = "tvm"\n', "compile"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\ncompile = 1\n', "compile"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nmax_nfe = 0\n', "max_nfe"),
    ('models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [4]\nmax_nfe = "lots"\n', "max_nfe"),
])
def test_malformed_spec(body, field, tmp_path, capsys):
    from samplerbench.bench.cli import main

    spec = write_spec(tmp_path / "bad.toml", body)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and field in err
    assert not out.exists()


@pytest.mark.parametrize("doc,field", [
    ("{not json", "malformed JSON"),
    ('{"means": [[0, 0]], "stds": [1]}', "weights"),
    ('{"weights": [1], "means": [[0, 0]], "stds": [1], "schedule": "nope"}', "schedule"),
    ('{"weights": [1, 1], "means": [[0, 0]], "stds": [1]}', "means"),
    ('{"weights": [1], "means": [[0, 0]], "covs": [[[1, 2], [2, 1]]]}', "covs"),
    ('{"weights": [1], "means": [[0, 0]], "stds": [1], "colour": 3}', "key"),
])
def test_malformed_gmm_json(doc, field, tmp_path, capsys):
    from samplerbench.bench.cli import main

    f = tmp_path / "m.json"
    f.write_text(doc)
    assert main(["sample", f"gmm:{f}", "euler", "--steps", "4", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and field in err
    assert not (tmp_path / "x.npz").exists()


def test_malformed_spec_in_a_real_process(tmp_path):
    spec = write_spec(tmp_path / "bad.toml", 'models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [-4]\n')
    r = sb("run", spec, "--out", tmp_path / "out")
    assert r.returncode == 2 and "steps" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_spec_with_fixed_and_adaptive_solvers(tmp_path):
    spec = write_spec(tmp_path / "a.toml", """
        models = ["gmm2d"]
        solvers = ["heun", "dopri5", "scipy_rk45"]
        steps = [4, 8]
        tolerances = [1e-2, 1e-4]
        samples = 4
        dtype = "float64"
    """)
    r = sb("run", spec, "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = rows_of(tmp_path / "o")
    assert len(rows) == 6 and all(x["status"] == "ok" for x in rows)
    ad = sorted((x for x in rows if x["solver"] == "dopri5"), key=lambda x: -x["solver_params"]["rtol"])
    assert [x["steps"] for x in ad] == [None, None]
    assert ad[1]["err_rms"] < ad[0]["err_rms"] and ad[1]["nfe"] > ad[0]["nfe"]


def test_gmm_json_model_runs(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[-1, 0, 0], [1, 0, 0]],
                             "stds": [0.3, 0.5], "schedule": "vp-linear"}))
    r = sb("run", "--models", f"gmm:{f}", "--solvers", "heun", "--steps", "8", "--samples", "4",
           "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    (row,) = rows_of(tmp_path / "o")
    assert row["status"] == "ok" and row["nfe"] == 15 and row["model"] == f"gmm:{f}"


def _start(spec: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "samplerbench", "run", str(spec), "--out", str(out),
                             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _kill_after(proc: subprocess.Popen, rows_file: Path, n_rows: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if rows_file.exists() and len(rows_file.read_text().splitlines()) >= n_rows:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_and_resume(tmp_path):
    """SIGKILL a run at two points; the reruns complete only the missing cells, each exactly
    once, and every value equals that of an uninterrupted run."""
    spec = write_spec(tmp_path / "k.toml", """
        name = "kill"
        models = ["gmm64"]
        solvers = ["euler", "heun", "midpoint", "rk4"]
        steps = [4, 8, 16, 32, 64, 128]
        samples = 32
        [timing]
        warmup = 1
        repeats = 5
    """)
    out = tmp_path / "out"
    rows_file = out / "rows.jsonl"
    _kill_after(_start(spec, out), rows_file, 3)
    before = rows_of(out)
    assert 3 <= len(before) < 24, "the run should have been killed mid-way"
    # simulate a torn final line from a kill during write
    with open(rows_file, "a") as f:
        f.write('{"case_id": "torn", "model": ')
    _kill_after(_start(spec, out), rows_file, len(before) + 4)
    middle = rows_of(out)
    assert len(before) < len(middle) < 24 and middle[: len(before)] == before
    r = sb("run", spec, "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"{len(middle)} reused" in r.stdout
    after = rows_of(out)
    ids = [x["case_id"] for x in after]
    assert len(ids) == 24 and len(set(ids)) == 24
    assert after[: len(middle)] == middle          # rows written before a kill are kept as they were
    # a third run computes nothing
    r = sb("run", spec, "--out", out)
    assert "24 reused" in r.stdout and len(rows_of(out)) == 24
    # the same values as a run that was never interrupted
    r = sb("run", spec, "--out", tmp_path / "clean")
    assert r.returncode == 0, r.stderr
    clean = {x["case_id"]: x for x in rows_of(tmp_path / "clean")}
    for x in after:
        c = clean[x["case_id"]]
        for k in ("status", "nfe", "err_rms", "err_max", "nonconv", "fid", "swd"):
            assert x[k] == c[k], (x["solver"], x["steps"], k)


def test_report_tables_and_plot(tmp_path):
    out = tmp_path / "out"
    r = sb("run", "--models", "gmm64", "--solvers", "euler,heun", "--steps", "8,16,32",
           "--samples", "8", "--dtype", "float64", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    r = sb("report", out, "--format", "md,csv,html,latex")
    assert r.returncode == 0, r.stderr
    rep = out / "report"
    md = (rep / "README.md").read_text()
    assert "| heun |" in md and "Fitted order" in md
    assert (rep / "err_vs_nfe_gmm64_karras.png").stat().st_size > 5000
    assert "booktabs" in (rep / "tables.tex").read_text()
    assert "<img" in (rep / "report.html").read_text()
    import pandas as pd

    df = pd.read_csv(rep / "rows.csv")
    assert len(df) == 6 and set(df["solver"]) == {"euler", "heun"}


def test_two_runs_on_one_directory(tmp_path):
    """While a run holds DIR, a second run exits 2 with a clear message and writes nothing."""
    spec = write_spec(tmp_path / "l.toml", """
        models = ["gmm64"]
        solvers = ["rk4"]
        steps = [64, 128, 256]
        samples = 64
        [timing]
        repeats = 20
    """)
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first = subprocess.Popen([sys.executable, "-m", "samplerbench", "run", str(spec), "--out", str(out),
                              "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "run.json").exists():
            time.sleep(0.05)
        assert (out / "run.json").exists()
        r = sb("run", spec, "--out", out)
        assert r.returncode == 2 and "another samplerbench run" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    # once the first is gone the directory is free again (the lock dies with its process)
    r = sb("run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4", "--samples", "2",
           "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
