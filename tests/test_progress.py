"""The progress line (bench/progress.py): it names the phase a cell is in, and its ETA, priced from
per-phase costs and planned model calls, stays near the true time left where "mean cell time x
cells left" is off by orders of magnitude.  Synthetic timings on a fake clock (no sleeps)."""

from __future__ import annotations

import io

import pytest

from samplerbench.bench.progress import Progress, Work, plan_cell


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def _cells(model, per_call, steps=(4, 8, 16, 32, 64), solvers=(("euler", 1), ("heun", 2)),
           ref_calls=6000, load_s=2.0):
    """(Work, phase durations) of one model's cells: its first cell loads the model and computes
    the float64 reference (ref_calls model calls); solves cost per_call seconds per call."""
    out = []
    for name, stages in solvers:
        for n in steps:
            calls = n * stages * 4 + 2 * n * stages      # 1 warm-up + 3 repeats + the 2N solve
            first = not out
            spent = {"setup": 0.01 + (load_s if first else 0.0),
                     "reference": ref_calls * per_call if first else None,
                     "solve": calls * per_call, "metrics": 0.02}
            out.append((Work(model, calls, ref=(model, "karras")), spent))
    return out


def _simulate(cells, stream=None):
    """Runs the cells through a Progress; returns [(eta at the cell's start, true time left)]."""
    clock = Clock()
    p = Progress(len(cells), stream=stream or io.StringIO(), work=[w for w, _ in cells],
                 clock=clock)
    left = sum(sum(v for v in s.values() if v) for _, s in cells)
    seen = []
    for w, spent in cells:
        p.start(f"{w.group} cell")
        seen.append((p.eta(), left))
        for phase in ("setup", "reference", "solve", "metrics"):
            if spent[phase] is None:
                continue
            p.phase(phase)
            clock.t += spent[phase]
            left -= spent[phase]
        p.finish_cell()
    return seen


def _cell_count_eta(cells):
    """The old estimate: mean time of the finished cells x cells left (current included)."""
    out, total = [], 0.0
    for k, (_, spent) in enumerate(cells):
        out.append(total / k * (len(cells) - k) if k else None)
        total += sum(v for v in spent.values() if v)
    return out


def test_eta_follows_the_true_time_left_within_a_model():
    cells = _cells("digits-rf", per_call=1e-3)
    seen = _simulate(cells)
    assert seen[0][0] is None                      # nothing measured yet
    ratios = [eta / true for eta, true in seen[1:]]
    # after one cell, every estimate is within 30% of the truth (the per-call cost is learned
    # from one cell; setup/metrics are medians, so the one-off model load is not charged again)
    assert all(0.7 < r < 1.3 for r in ratios), ratios
    # the scenario is one where counting cells fails: its first estimate is > 5x too high
    old = _cell_count_eta(cells)
    assert old[1] / seen[1][1] > 5


def test_eta_charges_each_reference_once_and_learns_each_model():
    cells = _cells("gmm64", 1e-4) + _cells("digits-vp", 1e-3)
    seen = _simulate(cells)
    n_a = len(cells) // 2
    # before digits-vp has run, its cells are priced at gmm64's costs (10x too cheap per call,
    # its reference once): the estimate is low, but never by more than that factor
    assert all(0.1 < eta / true < 1.3 for eta, true in seen[1:n_a + 1])
    # from its second cell on, digits-vp's own costs: within 30%
    assert all(0.7 < eta / true < 1.3 for eta, true in seen[n_a + 1:])
    # consecutive estimates never jump by more than the per-call cost ratio
    etas = [e for e, _ in seen[1:]]
    assert max(max(a / b, b / a) for a, b in zip(etas, etas[1:]) if b > 1) < 10


def test_unknown_calls_priced_by_median_and_strong_reference_by_calls():
    clock = Clock()
    works = [Work("m", 100, ref="sde", ref_calls=1000), Work("m", None), Work("m", None),
             Work("m", 200, ref="sde2", ref_calls=1000)]
    p = Progress(4, stream=io.StringIO(), work=works, clock=clock)
    p.start("a")
    p.phase("reference")
    clock.t += 10.0                               # 1000 calls at 0.01 s
    p.phase("solve")
    clock.t += 1.0                                # 100 calls
    p.finish_cell()
    p.start("b")
    p.phase("solve")
    clock.t += 3.0                                # an adaptive solve
    p.finish_cell()
    p.start("c")
    # c: median adaptive solve 3 s; d: 200 calls (2 s) + its strong reference 1000 calls (10 s)
    assert p.eta() == pytest.approx(3.0 + 2.0 + 10.0)
    clock.t += 1.0
    assert p.eta() == pytest.approx(2.0 + 2.0 + 10.0)   # the current cell's time so far counts


def test_the_line_names_the_phase():
    clock = Clock()
    tty = Tty()
    p = Progress(1, stream=tty, work=[Work("m", 10, ref="r")], clock=clock)
    p.start("gmm64 heun karras steps=8")
    for phase in ("reference", "solve", "metrics"):
        p.phase(phase)
        clock.t += 1.0
    p.finish_cell()
    shown = [ln for ln in tty.getvalue().split("\r\033[K") if ln]
    assert [ln.split("  [")[1].split("]")[0] for ln in shown] == [
        "setup", "reference", "solve", "metrics"]
    assert all("gmm64 heun karras steps=8" in ln for ln in shown)
    # in a log: a line per cell and for a reference; other phases only after min_interval
    log = io.StringIO()
    p = Progress(2, stream=log, work=[Work("m", 10, ref="r"), Work("m", 10, ref="r")],
                 clock=clock, min_interval=2.0)
    p.start("c1")
    p.phase("reference")
    clock.t += 5.0
    p.phase("solve")           # 5 s after the last line: shown
    p.phase("metrics")         # at once: not shown
    p.finish_cell()
    p.start("c2")
    assert [ln.split("  [")[1].split("]")[0] for ln in log.getvalue().splitlines()] == [
        "setup", "reference", "solve", "setup"]
    assert "ETA 0:00" in log.getvalue().splitlines()[-1]


def test_plan_cell_counts_calls_and_references():
    from samplerbench.bench.runner import expand_cells
    from samplerbench.bench.spec import parse_spec

    spec = parse_spec({"models": ["gmm2d"], "solvers": ["euler", "heun", "euler_maruyama"],
                       "steps": [8], "noise": ["brownian"], "samples": 8})
    plans = {c.solver.name: plan_cell(c, spec) for c in expand_cells(spec, "cpu")}
    # steps x NFE per step x (warm-up + repeats) + the 2N-step nonconv solve
    assert plans["euler"].calls == 8 * 1 * (spec.warmup + spec.repeats) + 16
    assert plans["heun"].calls == 8 * 2 * (spec.warmup + spec.repeats) + 32
    assert plans["euler"].ref == plans["heun"].ref is not None     # one dopri8 reference
    em = plans["euler_maruyama"]
    assert em.ref not in (None, plans["euler"].ref) and em.ref_calls == spec.sde_ref_steps


def test_runner_reports_its_phases(tmp_path, monkeypatch):
    from samplerbench.bench.runner import run_spec
    from samplerbench.bench.spec import parse_spec

    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    spec = parse_spec({"models": ["gmm2d"], "solvers": ["euler"], "steps": [2, 4],
                       "samples": 8, "metrics": {"weak": False},
                       "timing": {"warmup": 0, "repeats": 1}})
    run_spec(spec, tmp_path / "run")
    shown = [ln for ln in tty.getvalue().split("\r\033[K") if "[" in ln]
    phases = [ln.split("  [")[1].split("]")[0] for ln in shown if "steps=" in ln]
    # the first cell computes the reference; the second reuses it (no reference phase)
    assert phases == ["setup", "solve", "metrics", "reference", "metrics",
                      "setup", "solve", "metrics"]
