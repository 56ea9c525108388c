"""A plain progress line on stderr: cells done, the current cell, the phase it is in, elapsed time
and an ETA.

Phases: ``setup`` (model, grid), ``reference`` (computing a float64 reference solution, or an SDE
solver's strong reference; shown only when one is computed, not when it comes from the cache),
``solve`` (the timed solves, and the 2N-step solve of ``nonconv``) and ``metrics`` (errors, quality
metrics).  On a terminal the line is rewritten at every phase; in a log a line is written per cell,
and per phase when the last line is older than ``min_interval`` seconds (a reference always).

ETA.  The cells of one run differ in cost by orders of magnitude: the first cell of a model
computes its reference (thousands of model calls), a 64-step cell costs 16 times a 4-step one, a
U-Net costs more per call than a mixture.  "Mean time per finished cell x cells left" therefore
jumps by orders of magnitude.  Instead each remaining cell is priced from what it will do
(:class:`Work`, see :func:`plan_cell`) at the costs measured so far for its model:

* solve: its planned model calls x the model's seconds per planned call (sum of solve seconds over
  sum of planned calls of its finished cells; before the first, over every model's cells); a cell
  whose calls are unknown (adaptive solvers) costs the median solve time of such cells;
* reference: once per distinct reference key still to come, the mean measured time of computing
  one (an SDE strong reference, whose calls are known, at the solve rate);
* setup: the model's shortest per-cell setup after its first cell, plus, once per model not yet
  started, the mean setup of a model's first cell (loading it); metrics: the model's median.

The current cell counts with its estimate minus the time it has already run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Hashable

PHASES = ("setup", "reference", "solve", "metrics")


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass(frozen=True)
class Work:
    """What a cell will do, for the ETA."""
    group: str                          # the model (seconds per call are per model)
    calls: float | None                 # planned model calls of its solves; None: not known
    ref: Hashable | None = None         # the reference solution it needs (one per key)
    ref_calls: float | None = None      # that reference's model calls, where known


def plan_cell(cell, spec) -> Work:
    """The :class:`Work` of a runner cell: model calls per solve (steps x NFE per step, or the
    NFE budget) times the timed passes (warm-up + repeats), plus the 2N-step nonconv solve; the
    reference it will need when err_rms is measured."""
    from samplerbench.bench.runner import _wanted
    from samplerbench.solvers import get_solver

    try:
        solver = get_solver(cell.solver.name, **cell.solver_params())
    except Exception:          # the cell will record the failure; price it as unknown
        return Work(cell.model, None)
    stages = solver.stages
    per_pass = (None if solver.adaptive or stages is None else
                cell.steps * stages if cell.steps is not None else cell.nfe_budget)
    calls = None
    if per_pass is not None:
        calls = per_pass * (spec.warmup + spec.repeats)
        if _wanted(spec.nonconv, cell.model) and cell.steps is not None:
            calls += 2 * per_pass
    ref = ref_calls = None
    if _wanted(spec.error, cell.model):
        base = {"model": cell.model, "grid": cell.grid.name, "gp": cell.grid.params,
                "final": cell.final, "seed": cell.seed, "n": cell.n_samples,
                "dtype": cell.state_dtype, "guidance": cell.guidance}
        if not solver.stochastic:
            ref = json.dumps(base, sort_keys=True, default=str)
        elif cell.noise == "brownian" and cell.steps is not None and cell.grid.name != "list":
            ref = json.dumps({**base, "solver": cell.solver.name, "sp": solver.params()},
                             sort_keys=True, default=str)
            ref_calls = None if stages is None else spec.sde_ref_steps * stages
    return Work(cell.model, calls, ref, ref_calls)


class _Costs:
    """Measured per-phase costs of one model's (or all models') finished cells."""

    def __init__(self):
        self.solve_s, self.calls, self.cells = 0.0, 0.0, 0
        self.unknown: list[float] = []            # solve seconds of cells with unknown calls
        self.setup: list[float] = []
        self.metrics: list[float] = []
        self.refs: list[float] = []               # seconds per reference computed (calls unknown)
        self._summary = None

    def add(self, work: Work, spent: dict, first: bool = False) -> None:
        """A finished cell; ``first``: its model's first, whose setup (the model load) is a
        one-off and is not taken as a per-cell cost."""
        self.cells += 1
        if work.calls:
            self.solve_s += spent.get("solve", 0.0)
            self.calls += work.calls
        else:
            self.unknown.append(spent.get("solve", 0.0))
        if not first:
            self.setup.append(spent.get("setup", 0.0))
        self.metrics.append(spent.get("metrics", 0.0))
        if "reference" in spent and not work.ref_calls:
            self.refs.append(spent["reference"])
        self._summary = None

    def summary(self) -> dict:
        """rate (s per planned call), unknown (s per solve of unknown calls), overhead (setup +
        metrics, s per cell), ref (s per reference); None where nothing was measured."""
        if self._summary is None:
            med = statistics.median
            self._summary = {
                "rate": self.solve_s / self.calls if self.calls else None,
                "unknown": med(self.unknown) if self.unknown else None,
                "setup": min(self.setup) if self.setup else None,
                "metrics": med(self.metrics) if self.metrics else None,
                "ref": statistics.fmean(self.refs) if self.refs else None}
        return self._summary


class _Left:
    """The cells of one model still to come after the current one, summed."""

    def __init__(self):
        self.n, self.calls, self.unknown = 0, 0.0, 0
        self.refs: dict = {}                      # ref key -> [cells needing it, its calls]

    def add(self, w: Work, sign: int) -> None:
        self.n += sign
        if w.calls:
            self.calls += sign * w.calls
        else:
            self.unknown += sign
        if w.ref is not None:
            entry = self.refs.setdefault(w.ref, [0, w.ref_calls])
            entry[0] += sign
            if entry[0] == 0:
                del self.refs[w.ref]


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=None,
                 work: list[Work] | None = None, clock: Callable[[], float] = time.perf_counter,
                 min_interval: float = 2.0):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.clock, self.min_interval = clock, min_interval
        self.t0 = clock()
        self.work = list(work or [])      # the cells still to run, in order
        self.left: dict[str, _Left] = {}  # the cells after the current one, per model
        for w in self.work:
            self.left.setdefault(w.group, _Left()).add(w, +1)
        self.index = -1                   # the current cell's position in ``work``
        self.label, self.current = "", None
        self.costs: dict[str, _Costs] = {}
        self.all = _Costs()
        self.refs_done: set = set()
        self.first_setup: list[float] = []   # the setup of each model's first cell (its load)
        self.spent: dict[str, float] = {}
        self._phase, self._phase_t0, self._cell_t0, self._printed = None, 0.0, 0.0, -1e300

    # -- the runner's calls ---------------------------------------------------------------------
    def start(self, label: str, work: Work | None = None) -> None:
        """A cell starts (in the setup phase).  ``work``: its Work, else the next of ``work``."""
        self.index += 1
        if work is None and self.index < len(self.work):
            work = self.work[self.index]
            self.left[work.group].add(work, -1)
        self.label, self.current, self.spent = label, work, {}
        self._cell_t0 = self._phase_t0 = self.clock()
        self._phase = "setup"
        self._show(force=True)

    def phase(self, name: str) -> None:
        """The current cell enters phase ``name`` (one of :data:`PHASES`)."""
        if self._phase is None or name == self._phase:
            return
        self._close_phase()
        self._phase = name
        self._show(force=name == "reference")

    def finish_cell(self, seconds: float | None = None) -> None:
        """The current cell is done (``seconds`` is accepted for old callers and unused: the
        phases are timed here)."""
        if self._phase is not None:
            self._close_phase()
            w = self.current
            if w is not None:
                first = w.group not in self.costs
                if first:
                    self.first_setup.append(self.spent.get("setup", 0.0))
                self.costs.setdefault(w.group, _Costs()).add(w, self.spent, first)
                self.all.add(w, self.spent, first)
                if w.ref is not None:
                    self.refs_done.add(w.ref)
        self._phase, self.current = None, None
        self.done += 1

    def close(self, summary: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(summary + "\n")
        self.stream.flush()

    # -- the estimate ---------------------------------------------------------------------------
    def _costs(self, group: str) -> dict:
        """The group's measured costs, each falling back to all groups' where it has none."""
        g = self.costs.get(group)
        mine = g.summary() if g else {}
        every = self.all.summary()
        out = {k: mine.get(k) if mine.get(k) is not None else every[k] for k in every}
        return out

    def _price(self, c: dict, n: int, calls: float, unknown: int, refs) -> float:
        """Seconds of ``n`` cells with ``calls`` planned calls in all, ``unknown`` cells of
        unknown calls, computing the references ``refs`` ([calls or None] each)."""
        rate = c["rate"] if c["rate"] is not None else 0.0
        per_unknown = c["unknown"] if c["unknown"] is not None else (
            # no adaptive cell measured yet: price it as the mean fixed-step solve
            self.all.solve_s / max(self.all.cells - len(self.all.unknown), 1))
        total = n * ((c["setup"] or 0.0) + c["metrics"]) + calls * rate + unknown * per_unknown
        for rc in refs:
            total += rc * rate if rc and c["rate"] is not None else (c["ref"] or 0.0)
        return total

    def _load(self) -> float:
        """The one-off setup of a model's first cell (loading it), as measured so far."""
        return statistics.fmean(self.first_setup) if self.first_setup else 0.0

    def estimate(self, work: Work, new_ref: bool) -> float | None:
        """Seconds ``work`` will take at the costs measured so far (None: nothing measured)."""
        if not self.all.cells:
            return None
        refs = [work.ref_calls] if new_ref else []
        return self._price(self._costs(work.group), 1, work.calls or 0.0,
                           0 if work.calls else 1, refs)

    def eta(self) -> float | None:
        """Seconds left: the current cell's estimate less its time so far, plus the cells after
        it.  None before any cell has finished or without a plan."""
        if not self.work or not self.all.cells:
            return None
        total = 0.0
        w = self.current
        if w is not None:
            new = w.ref is not None and w.ref not in self.refs_done
            est = self.estimate(w, new) + (self._load() if w.group not in self.costs else 0.0)
            total += max(est - (self.clock() - self._cell_t0), 0.0)
        for group, left in self.left.items():
            if left.n <= 0:
                continue
            refs = [rc for key, (_, rc) in left.refs.items()
                    if key not in self.refs_done and not (w is not None and key == w.ref)]
            total += self._price(self._costs(group), left.n, left.calls, left.unknown, refs)
            if group not in self.costs and (w is None or w.group != group):
                total += self._load()
        return total

    # -- internals ------------------------------------------------------------------------------
    def _close_phase(self) -> None:
        now = self.clock()
        self.spent[self._phase] = self.spent.get(self._phase, 0.0) + now - self._phase_t0
        self._phase_t0 = now

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        eta = self.eta()
        eta = "?" if eta is None else _fmt(eta)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"[{self.done:>{len(str(self.total))}}/{self.total}] {pct:5.1f}%  {self.label}  "
                f"[{self._phase}]  | elapsed {_fmt(elapsed)}  ETA {eta}")

    def _show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not self.tty and not force and now - self._printed < self.min_interval:
            return
        self._printed = now
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
