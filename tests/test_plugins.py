"""Plugins are isolated: a broken entry point of the ``samplerbench.solvers`` group (import error,
not a Solver, duplicate name, bad capabilities) is skipped with one warning line naming it and
why, the built-ins and the good plugins keep working, and ``check-solver`` reports the failure
(exit 1, no traceback), streaming one line per check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import ROOT, rows_of, sb

PLUGINS = '''
import time
from dataclasses import dataclass
from samplerbench.solvers import Solver


@dataclass(frozen=True)
class Good(Solver):
    """Euler by a third party."""
    name = "plug_good"
    order = 1.0
    reference = "a good plugin"

    def step(self, dynamics, t0, t1, x, state, noise):
        return x + (t1 - t0) * dynamics.velocity(t0, x), state


@dataclass(frozen=True)
class FakeEuler(Good):
    name = "euler"                      # a built-in's name


@dataclass(frozen=True)
class TwinA(Good):
    name = "plug_twin"


@dataclass(frozen=True)
class TwinB(Good):
    name = "plug_twin"                  # the same name from a second entry point


@dataclass(frozen=True)
class BadKind(Good):
    name = "plug_pde"
    kind = "pde"


@dataclass(frozen=True)
class BadStages(Good):
    name = "plug_stages"
    stages = -1


@dataclass(frozen=True)
class Raises(Solver):
    name = "plug_raise"
    order = 1.0

    def step(self, dynamics, t0, t1, x, state, noise):
        raise RuntimeError("plugin bug")


@dataclass(frozen=True)
class Hangs(Good):
    """Hangs on a batch of one (the 'batch' check): the checks before it must already be out."""
    name = "plug_hang"
    order = None

    def step(self, dynamics, t0, t1, x, state, noise):
        if x.shape[0] == 1:
            time.sleep(600)
        return super().step(dynamics, t0, t1, x, state, noise)


def not_a_solver():
    return 1
'''

ENTRY_POINTS = {
    "plug_good": "sb_plugins_mod:Good",
    "plug_missing": "sb_no_such_module:Thing",          # import error
    "plug_boom": "sb_boom_mod:Thing",                   # raises while importing
    "plug_func": "sb_plugins_mod:not_a_solver",         # not a Solver subclass
    "euler": "sb_plugins_mod:FakeEuler",                # duplicate of a built-in
    "plug_twin": "sb_plugins_mod:TwinA",
    "plug_twin_b": "sb_plugins_mod:TwinB",              # duplicate of another plugin
    "plug_pde": "sb_plugins_mod:BadKind",               # kind = "pde"
    "plug_stages": "sb_plugins_mod:BadStages",          # stages = -1
    "plug_raise": "sb_plugins_mod:Raises",
    "plug_hang": "sb_plugins_mod:Hangs",
}
BROKEN = {"plug_missing": "sb_no_such_module", "plug_boom": "boom at import",
          "plug_func": "Solver subclass", "euler": "duplicate solver name 'euler'",
          "plug_twin_b": "plug_twin", "plug_pde": "'pde'", "plug_stages": "stages"}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A throwaway distribution (module + *.dist-info/entry_points.txt) of good and bad plugins."""
    d = tmp_path_factory.mktemp("plugins")
    (d / "sb_plugins_mod.py").write_text(PLUGINS)
    (d / "sb_boom_mod.py").write_text("raise ValueError('boom at import')\n")
    info = d / "sb_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[samplerbench.solvers]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    return d


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("samplerbench: warning:")]


def test_list_skips_each_broken_plugin_with_one_warning(plugins):
    r = sb("list", "solvers", plugin=plugins)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warned = warnings_of(r.stderr)
    assert len(warned) == len(BROKEN), r.stderr
    for ep, why in BROKEN.items():
        line = [w for w in warned if f"plugin {ep!r}" in w]
        assert len(line) == 1 and why in line[0] and ENTRY_POINTS[ep] in line[0], (ep, warned)
    names = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert {"euler", "heun", "dpmpp_2m", "plug_good", "plug_twin", "plug_raise"} <= set(names)
    assert not {"plug_pde", "plug_stages", "plug_func"} & set(names)
    euler = [line for line in r.stdout.splitlines() if line.startswith("euler ")]
    assert "a good plugin" not in euler[0]             # the built-in kept its name


def test_builtins_and_good_plugins_still_sample_and_run(plugins, tmp_path):
    for solver in ("euler", "plug_good"):
        out = tmp_path / f"{solver}.npz"
        r = sb("sample", "gmm2d", solver, "--steps", "4", "--n", "4", "--out", out,
               plugin=plugins)
        assert r.returncode == 0 and out.is_file(), r.stderr
    out = tmp_path / "run"
    r = sb("run", "--models", "gmm2d", "--solvers", "euler,plug_good,plug_twin", "--steps", "4",
           "--samples", "4", "--dtype", "float64", "--out", out, "--quiet", plugin=plugins)
    assert r.returncode == 0, r.stderr
    rows = {x["solver"]: x for x in rows_of(out)}
    assert set(rows) == {"euler", "plug_good", "plug_twin"}
    assert all(x["status"] == "ok" for x in rows.values())
    assert rows["plug_good"]["err_rms"] == pytest.approx(rows["euler"]["err_rms"], rel=1e-12)


def test_a_skipped_plugin_named_in_a_run_exits_2_with_why(plugins, tmp_path):
    r = sb("run", "--models", "gmm2d", "--solvers", "euler,plug_pde", "--steps", "4",
           "--samples", "4", "--out", tmp_path / "o", "--quiet", plugin=plugins)
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if "warning" not in line]
    assert len(err) == 1 and "plug_pde" in err[0] and "'pde'" in err[0], r.stderr


@pytest.mark.parametrize("name,why", [("plug_pde", "'pde'"), ("plug_stages", "stages"),
                                      ("plug_missing", "sb_no_such_module"),
                                      ("plug_func", "Solver subclass")])
def test_check_solver_reports_a_plugin_that_did_not_load(plugins, name, why):
    r = sb("check-solver", name, plugin=plugins)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "[FAIL] load" in r.stdout and why in r.stdout and "NOT conformant" in r.stdout


def test_check_solver_reports_a_step_that_raises(plugins):
    r = sb("check-solver", "plug_raise", plugin=plugins)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    fails = [line for line in r.stdout.splitlines() if "[FAIL]" in line]
    assert len(fails) >= 5 and all("RuntimeError: plugin bug" in f for f in fails), r.stdout
    assert r.stdout.rstrip().endswith("result: NOT conformant")


def test_check_solver_streams_one_line_per_check(plugins):
    """The lines of the finished checks arrive while a later check is still running."""
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=str(plugins) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "samplerbench", "check-solver", "plug_hang"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=ROOT)
    lines, t0 = [], time.monotonic()
    try:
        while time.monotonic() - t0 < 240:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "determinism" in line:
                break
        assert proc.poll() is None               # still hanging in the batch check
    finally:
        proc.kill()
        proc.wait()
    text = "".join(lines)
    assert text.startswith("check-solver plug_hang"), text
    for check in ("order", "nfe/zero", "nfe/t_min", "determinism"):
        assert f"] {check}" in text, text


def test_check_solver_callback_sees_each_check_in_order():
    from samplerbench.bench.conformance import check_solver

    seen = []
    rep = check_solver("euler", on_check=seen.append)
    assert seen == rep.checks and [c.name for c in seen][:3] == ["order", "nfe/zero", "nfe/t_min"]
    assert rep.passed
