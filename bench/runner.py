"""The matrix runner: expand a Spec into cells, run each, append one row per finished cell.

One reference solution per (model, seed block, interval) is computed in float64 by the dopri8
reference solver, cached on disk under ``DIR/cache/`` and reused by every solver.  A cell that
diverges or raises is recorded with its status and message and the matrix goes on; a rerun skips
cells already in ``rows.jsonl``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from samplerbench.bench.distributed import Dist
from samplerbench.bench.env import environment, git_sha
from samplerbench.bench.budgets import steps_for_budget
from samplerbench.bench.decode import decode_samples
from samplerbench.bench.metrics import (PeakMemory, error_metrics, nonconv, strong_reference,
                                        timed)
from samplerbench.bench.quality import QualityMetrics
from samplerbench.bench.progress import Progress, plan_cell
from samplerbench.bench.spec import NamedParams, Spec
from samplerbench.bench.store import (BUDGET_MESSAGE, RowStore, atomic_write_text,
                                      latest_rows, load_tensors, read_rows,
                                      remove_partial_files, save_tensors, storage_error)
from samplerbench.models.denoiser import (CastDenoiser, CompiledDenoiser, NFEBudgetExceeded,
                             TimedDenoiser)
from samplerbench.models.errors import UserError
from samplerbench.models.guidance import class_labels, conditional_models, guided
from samplerbench.models.zoo import is_analytic, load_model, model_entry
from samplerbench.solvers import Solution, get_solver, initial_noise, make_noise
from samplerbench.solvers.grids import make_model_grid
from samplerbench.solvers.classical.adaptive import reference_solve
from samplerbench.solvers.noise import sample_seeds

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


class _CellFailed(RuntimeError):
    """A solve failed on some rank; the message is the one to record."""


def _failure(exc: BaseException) -> str:
    """A failed cell's message: the exception and where it was raised (file:line)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _note(row: dict, text: str) -> None:
    """Add ``text`` to an ok row's message (what was not computed, and why)."""
    row["message"] = "; ".join(m for m in (row.get("message"), text) if m)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device", device, ["cpu", "auto"],
                        hint="torch.cuda.is_available() is False on this machine")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device", device, ["cpu", "auto"], hint="MPS is not available")
    return torch.device(device)


@dataclass(frozen=True)
class Cell:
    model: str
    solver: NamedParams
    grid: NamedParams
    final: str
    steps: int | None          # None for adaptive solvers
    tol: float | None          # rtol = atol for adaptive solvers
    noise: str | None          # None for deterministic solvers
    guidance: float | None     # classifier-free guidance weight w (None: no guidance)
    n_samples: int
    seed: int
    dtype: str                 # the model's
    state_dtype: str           # the solver state's
    device: str
    compile: str | None = None  # torch.compile backend of the model (None: eager)
    nfe_budget: int | None = None  # an NFE budget: steps = the largest N within it (run time)

    def solver_params(self) -> dict:
        params = dict(self.solver.params)
        if self.tol is not None:
            params.update(rtol=self.tol, atol=self.tol)
        return params

    def config(self) -> dict:
        return {"model": self.model, "solver": self.solver.name,
                "solver_params": self.solver_params(), "grid": self.grid.name,
                "grid_params": self.grid.params, "final": self.final, "steps": self.steps,
                "n_samples": self.n_samples, "seed": self.seed, "noise": self.noise,
                "guidance": self.guidance, "dtype": self.dtype, "state_dtype": self.state_dtype,
                "device": self.device, "compile": self.compile,
                **({"nfe_budget": self.nfe_budget} if self.nfe_budget is not None else {})}

    @property
    def case_id(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        s = self.solver.key()
        budget = (f"nfe<={self.nfe_budget}" if self.nfe_budget is not None else
                  f"steps={self.steps}" if self.steps is not None else f"tol={self.tol:g}")
        noise = f" noise={self.noise}" if self.noise else ""
        w = f" w={self.guidance:g}" if self.guidance is not None else ""
        return f"{self.model} {s} {self.grid.key()} {budget}{noise}{w}"


def expand_cells(spec: Spec, device: str) -> list[Cell]:
    cells = []
    for model in spec.models:
        for grid in spec.grids:
            for s in spec.solvers:
                solver = get_solver(s.name, **s.params)
                budgets = ([(None, t, None) for t in spec.tolerances] if solver.adaptive
                           else [(n, None, None) for n in spec.steps]
                           + [(None, None, b) for b in spec.nfe])
                noises = spec.noise if solver.stochastic else [None]
                for steps, tol, nfe_budget in budgets:
                    for noise in noises:
                        for w in spec.guidance:
                            for dtype in spec.dtype:
                                if dtype == "native":
                                    dtype = "float64" if is_analytic(model) else "float32"
                                state = spec.state_dtype or (
                                    "float64" if dtype == "float64" else "float32")
                                cells.append(Cell(model, s, grid, spec.final, steps, tol, noise,
                                                  w, spec.samples, spec.seed, dtype, state,
                                                  device, spec.compile, nfe_budget))
    return cells


def _wanted(setting, model: str) -> bool:
    """A metric switch: true, false or "analytic" (only for analytic models, whose exact
    denoiser makes a float64 reference cheap)."""
    return is_analytic(model) if setting == "analytic" else bool(setting)


class Runner:
    """Runs a spec into ``out_dir``.  ``run()`` returns a summary dict."""

    def __init__(self, spec: Spec, out_dir: str | Path, device: str | None = None,
                 resume: bool = True, progress: bool = True, recompute: tuple = (),
                 recompute_if: tuple = ()):
        self.spec = spec
        self.recompute = set(recompute)   # solvers whose finished cells are computed again
        self.recompute_if = tuple(recompute_if)   # (key, op, number): rows to compute again
        self.out = Path(out_dir)
        self.device = resolve_device(device or spec.device)
        self.dist = Dist.from_env(self.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.resume = resume
        self.progress_enabled = progress
        self.store = RowStore(self.out)
        self._models: dict = {}
        self._refs: dict = {}
        self._grids: dict = {}
        self._x_inits: dict = {}
        self._timers: dict = {}
        self.quality = QualityMetrics(self.out / "cache", kid=getattr(spec, "kid", False),
                                      fid_features=getattr(spec, "fid_features", "auto"))
        self._budget_rows: dict = {}   # resolved budget cells computed in this process
        self._git_sha = git_sha()      # the code this run loaded: read once, not per row
        self._progress = None          # the progress line, told which phase a cell is in

    def _phase(self, name: str) -> None:
        if self._progress is not None:
            self._progress.phase(name)

    # ------------------------------------------------------------------------------------------
    def _write_run_json(self) -> None:
        path = self.out / "run.json"
        invocations = []
        if path.exists() and self.resume:
            try:
                invocations = json.loads(path.read_text()).get("invocations", [])
            except (json.JSONDecodeError, OSError):
                invocations = []
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        invocations.append({"started": now, "git_sha": git_sha(), "device": str(self.device)})
        doc = {"spec": self.spec.to_dict(), "spec_digest": self.spec.digest(),
               "environment": environment(str(self.device)), "invocations": invocations,
               "row_schema": "shared/DESIGN.md#cli-contract"}
        atomic_write_text(path, json.dumps(doc, indent=2, default=str))

    def model(self, name: str):
        if name not in self._models:      # parse_spec loaded it to validate the spec: reuse it
            loaded = getattr(self.spec, "loaded", None) or {}
            self._models[name] = loaded[name] if name in loaded else load_model(name)
        return self._models[name]

    def _x_init(self, den, grid, cell: Cell) -> torch.Tensor:
        """sigma(t_start) z with z the cell's per-sample initial noise.  The last two draws are
        kept: consecutive cells of a model (every solver, step count and grid starting at the same
        time) share them, and each cell gets its own copy."""
        sigma = float(den.schedule.sigma(grid.t_start))
        key = (cell.model, cell.seed, cell.n_samples, tuple(den.data_shape), cell.state_dtype,
               sigma)
        x = self._x_inits.get(key)
        if x is None:
            z = initial_noise(sample_seeds(cell.seed, cell.n_samples), den.data_shape,
                              dtype=DTYPES[cell.state_dtype], device=self.device)
            x = self._x_inits[key] = z.mul_(sigma)
            while len(self._x_inits) > 2:
                self._x_inits.pop(next(iter(self._x_inits)))
        return x.clone()

    def _grid(self, cell: Cell, den, steps: int):
        """The cell's time grid, built once per (model, grid, steps, final) and shared by the
        cells that differ only in solver, seed or dtype (grids are immutable)."""
        params = json.dumps(cell.grid.params, sort_keys=True, default=str)
        key = (cell.model, cell.grid.name, params, steps, cell.final)
        g = self._grids.get(key)
        if g is None:
            g = self._grids[key] = make_model_grid(den, cell.grid.name, steps,   # "auto" resolved
                                                   final=cell.final, **cell.grid.params)
        return g

    def _timed(self, den):
        """The timing wrapper of ``den``, one per model object for the whole run."""
        hit = self._timers.get(id(den))
        if hit is None or hit[0] is not den:
            if len(self._timers) > 64:      # per-cell wrappers (guidance, casts) come and go
                self._timers.clear()
            hit = self._timers[id(den)] = (den, TimedDenoiser(den))
        return hit[1]

    def _compiled(self, den, cell: Cell):
        """``den`` under torch.compile, built once per (model, dtype, backend) so that every
        cell of the model reuses the compiled graphs."""
        key = ("compiled", cell.model, cell.dtype, cell.state_dtype, cell.guidance, cell.compile)
        if key not in self._models:
            self._models[key] = CompiledDenoiser(den, cell.compile)
        return self._models[key]

    def reference(self, den, grid, cell: Cell, x_init: torch.Tensor,
                  cond: dict | None = None) -> torch.Tensor:
        """Float64 reference endpoint for this model, seed block and interval (disk-cached)."""
        key = {"model": cell.model, "seed": cell.seed, "n": cell.n_samples,
               "t_start": grid.t_start, "t_end": grid.t_end, "final": grid.final,
               "rtol": self.spec.ref_rtol, "atol": self.spec.ref_atol, "dtype": cell.state_dtype,
               "shape": list(den.data_shape), "method": "dopri8", "guidance": cell.guidance}
        h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        if h in self._refs:
            return self._refs[h]
        path = self.out / "cache" / f"ref-{h}.safetensors"
        x_ref = None
        data = load_tensors(path, ("x_init", "x_ref"))     # None: absent or unreadable
        if data is not None and data["x_init"].shape == x_init.shape and torch.equal(
                data["x_init"], x_init.double().cpu()):
            x_ref = data["x_ref"]
        if x_ref is None:
            self._phase("reference")
            sol = reference_solve(get_solver("dopri8").make_dynamics(den, cond),
                                  x_init.double().cpu(),
                                  grid, rtol=self.spec.ref_rtol, atol=self.spec.ref_atol)
            if sol.status != "ok":
                raise RuntimeError(f"reference solution failed: {sol.message}")
            x_ref = sol.x
            save_tensors(path, {"x_init": x_init.double().cpu(), "x_ref": x_ref},
                         metadata={k: str(v) for k, v in key.items()})
            self._phase("metrics")
        self._refs[h] = x_ref
        return x_ref

    def strong_ref(self, solver, den, grid, cell: Cell, x_init: torch.Tensor,
                   cond: dict | None = None) -> torch.Tensor:
        """The same solver at ``sde_ref_steps`` steps on the same Brownian path (cached per
        model, solver, grid family and seed block)."""
        key = json.dumps({"model": cell.model, "solver": solver.name, "params": solver.params(),
                          "grid": grid.name, "gp": grid.params, "final": grid.final,
                          "seed": cell.seed, "n": cell.n_samples, "dtype": cell.state_dtype,
                          "steps": self.spec.sde_ref_steps, "guidance": cell.guidance},
                         sort_keys=True, default=str)
        if key not in self._refs:
            self._phase("reference")
            seeds = sample_seeds(cell.seed, cell.n_samples)
            sol = strong_reference(solver, den, x_init, seeds, grid, self.spec.sde_ref_steps,
                                   cond=cond)
            if sol.status != "ok":
                raise RuntimeError(f"strong reference failed: {sol.message}")
            self._refs[key] = sol.x.detach().cpu()
            self._phase("metrics")
        return self._refs[key]

    # ------------------------------------------------------------------------------------------
    def _solve(self, solver, den, grid, x_init, seeds, noise_mode, cond=None):
        dyn = solver.make_dynamics(den, cond)
        noise = (make_noise(noise_mode, seeds, den.data_shape, grid, dtype=x_init.dtype,
                            device=self.device) if solver.stochastic else None)
        return solver.solve(dyn, x_init, grid, noise)

    def _sharded(self, solver, den, grid, x_init, cell: Cell, repeats: int, warmup: int,
                 cond: dict | None = None, single_over_s: float | None = None):
        """Solve this rank's share of the samples (timed), gather on every rank.

        Returns a dict with x (all samples, CPU), status, message, nfe, forward_passes, wall
        (the slowest rank's median).  An exception on any rank fails the cell on all of them
        without leaving a rank waiting in a collective."""
        part = self.dist.shard(cell.n_samples)
        seeds = sample_seeds(cell.seed, cell.n_samples)[part]
        local = {"status": "ok", "message": "", "x": None, "nfe": None, "fp": None, "wall": None,
                 "model": None, "mem": None, "mem_kind": None}
        peak = PeakMemory(self.device)
        try:
            tden = self._timed(den)
            walls = []
            xs, ss = x_init[part], seeds
            local_cond = {k: v[part] for k, v in (cond or {}).items()}

            def once(chunks: int):
                # samples are independent (per-sample seeds): solving the share in chunks gives
                # the same samples; used after an out-of-memory error
                tden.seconds = 0.0
                def part(a, b):
                    tden.budget(self.spec.max_nfe)         # the NFE cap is per solve
                    return self._solve(solver, tden, grid, xs[a:b], ss[a:b], cell.noise,
                                       {k: v[a:b] for k, v in local_cond.items()})

                bounds = [len(ss) * i // chunks for i in range(chunks + 1)]
                sols = [part(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
                walls.append(tden.seconds)
                bad = next((q for q in sols if q.status != "ok"), None)
                first = sols[0]
                x = sols[0].x if len(sols) == 1 else torch.cat([q.x for q in sols])
                return Solution(x=x, nfe=first.nfe,
                                n_steps=first.n_steps, status=bad.status if bad else "ok",
                                message=bad.message if bad else "",
                                forward_passes=first.forward_passes), chunks

            chunks, note = 1, ""
            peak.start()
            while True:
                try:
                    (sol, chunks), wall, times = timed(lambda: once(chunks), self.device,
                                                       warmup, repeats, single_over_s)
                    break
                except torch.OutOfMemoryError:
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if chunks >= 2:
                        raise
                    chunks = 2
                    note = (f"out of memory at batch {len(ss)}; solved in 2 chunks "
                            f"(NFE is per chunk)")
            model_s = sorted(walls[-len(times):])[len(times) // 2]
            local["mem"], local["mem_kind"] = peak.stop()
            local.update(status=sol.status, message=sol.message or note, nfe=sol.nfe,
                         fp=sol.forward_passes, wall=wall, x=sol.x.detach().cpu(), model=model_s)
        except NFEBudgetExceeded as exc:
            where = ("" if exc.t is None else f", at t = {exc.t:.4g} on the way from "
                     f"{grid.t_start:.4g} to {grid.t_end:.4g}")
            local.update(status="failed", message=(
                f"{BUDGET_MESSAGE} stopped after {self.spec.max_nfe} model calls (spec max_nfe) "
                f"before the solve finished{where}"))
        except Exception as exc:  # recorded, and the other ranks learn of it below
            local.update(status="failed", message=_failure(exc))
        if self.dist.world == 1:
            if local["status"] == "failed":
                raise _CellFailed(local["message"])
            return local
        parts = self.dist.all_gather(local)
        for st in ("failed", "diverged"):
            bad = [p for p in parts if p["status"] == st]
            if bad:
                if st == "failed":
                    raise _CellFailed(bad[0]["message"])
                return {**bad[0], "x": None}
        return {"status": "ok", "message": "", "x": torch.cat([p["x"] for p in parts]),
                "nfe": max(p["nfe"] for p in parts), "fp": max(p["fp"] for p in parts),
                "wall": max(p["wall"] for p in parts), "model": max(p["model"] for p in parts),
                "mem": max((p["mem"] for p in parts if p["mem"] is not None), default=None),
                "mem_kind": parts[0]["mem_kind"]}

    def _blank_row(self, cell: Cell, case_id: str | None = None) -> dict:
        return {**cell.config(), "case_id": case_id or cell.case_id, "nfe": None,
                "forward_passes": None, "status": "ok", "message": "", "fid": None,
                "fid_features": None, "swd": None, "err_rms": None, "err_max": None,
                "nonconv": None, "wall_s": None, "time_per_sample_s": None,
                "peak_mem_bytes": None, "git_sha": self._git_sha,
                "torch_version": torch.__version__, "device": str(self.device),
                "max_nfe": self.spec.max_nfe, "blocks": self.spec.blocks}

    def run_cell(self, cell: Cell) -> dict:
        """One row for ``cell``.  A budget cell (``nfe_budget``) first gets its step count
        (:func:`samplerbench.bench.budgets.steps_for_budget`); two budgets that resolve to the
        same step count are one computation (the second row copies the first's numbers)."""
        if cell.nfe_budget is None:
            return self._run_cell(cell)
        try:
            solver = get_solver(cell.solver.name, **cell.solver_params())
            fit = steps_for_budget(solver, self.model(cell.model), cell.grid.name,
                                   cell.grid.params, cell.final, cell.nfe_budget)
        except UserError:
            raise
        except Exception as exc:
            return {**self._blank_row(cell), "status": "failed", "message": _failure(exc)}
        if fit is None:
            return {**self._blank_row(cell), "status": "skipped", "message": (
                f"one step of {cell.solver.name} costs more than the NFE budget "
                f"{cell.nfe_budget}")}
        resolved = dataclasses.replace(cell, steps=fit[0])
        memo = json.dumps({**resolved.config(), "nfe_budget": None}, sort_keys=True, default=str)
        hit = self._budget_rows.get(memo)
        if hit is not None:
            return {**hit, "case_id": cell.case_id, "nfe_budget": cell.nfe_budget}
        row = self._run_cell(resolved, case_id=cell.case_id)
        self._budget_rows[memo] = row
        return row

    def _run_cell(self, cell: Cell, case_id: str | None = None) -> dict:
        row = self._blank_row(cell, case_id)
        try:
            den = self.model(cell.model)
            base = den                     # the model itself: its dataset / mixture for metrics
            cond = None
            if cell.guidance is not None:
                entry = model_entry(cell.model)
                if entry is None or not entry.num_classes:
                    row.update(status="skipped", message="guidance needs a class-conditional "
                               f"model: {', '.join(conditional_models())}")
                    return row
                den = guided(den, cell.guidance)
                cond = {"y": class_labels(sample_seeds(cell.seed, cell.n_samples),
                                          entry.num_classes)}
            run_den = den if cell.dtype == cell.state_dtype else CastDenoiser(den, DTYPES[cell.dtype])
            if cell.compile:
                run_den = self._compiled(run_den, cell)
            solver = get_solver(cell.solver.name, **cell.solver_params())
            row["solver_params"] = solver.params()
            grid = self._grid(cell, den, cell.steps or 2)
            row["grid_params"] = grid.params
            if grid.name != cell.grid.name:        # "auto": record the grid it resolved to
                row.update(grid=grid.name, grid_requested=cell.grid.name)
            reason = solver.check(den, grid)
            if reason:
                row.update(status="skipped", message=reason)
                return row
            x_init = self._x_init(den, grid, cell)
            self._phase("solve")
            sol = self._sharded(solver, run_den, grid, x_init, cell, self.spec.repeats,
                                self.spec.warmup, cond,
                                single_over_s=None if cell.compile else self.spec.single_over_s)
            wall = sol["wall"]
            row.update(nfe=sol["nfe"], forward_passes=sol["fp"], wall_s=wall,
                       model_s=sol["model"],
                       overhead_s=None if wall is None else max(wall - sol["model"], 0.0),
                       time_per_sample_s=None if wall is None else wall / cell.n_samples,
                       status=sol["status"], message=sol["message"])
            row["peak_mem_bytes"], row["peak_mem_kind"] = sol["mem"], sol["mem_kind"]
            if sol["status"] != "ok":
                return row
            x = sol["x"]
            blown = self.quality.blowup(base, x, float(den.schedule.sigma(grid.t_end)))
            if blown:                     # finite, but no sample of the model: not a measurement
                row.update(status="diverged", message=blown)
                return row
            sol2 = None
            if _wanted(self.spec.nonconv, cell.model) and cell.steps is not None:  # all ranks
                try:
                    grid2 = self._grid(cell, den, 2 * cell.steps)
                except UserError as exc:    # e.g. a 'list' grid: no 2N version of it exists
                    grid2 = None
                    _note(row, f"nonconv not computed: the grid has no {2 * cell.steps}-step "
                          f"version ({exc})")
                if grid2 is not None:
                    sol2 = self._sharded(solver, run_den, grid2, x_init, cell, repeats=1,
                                         warmup=0, cond=cond)
            if not self.dist.is_main:
                return row
            self._phase("metrics")
            error = _wanted(self.spec.error, cell.model)
            if error and not solver.stochastic:
                x_ref = self.reference(den, grid, cell, x_init, cond)
                row.update(error_metrics(x, x_ref))
                row["reference"] = (f"dopri8 float64 rtol={self.spec.ref_rtol:g} "
                                    f"atol={self.spec.ref_atol:g}")
            elif (error and cell.noise == "brownian" and cell.steps is not None
                  and grid.name != "list"):
                x_ref = self.strong_ref(solver, den, grid, cell, x_init, cond)
                row["reference"] = (f"{solver.name} at {self.spec.sde_ref_steps} steps on the "
                                    f"same Brownian path")
                ref_blown = self.quality.blowup(base, x_ref,
                                                float(den.schedule.sigma(grid.t_end)))
                if ref_blown:             # no strong error against a reference that blew up
                    _note(row, f"err_rms not computed: the strong reference {ref_blown}")
                else:
                    row.update(error_metrics(x, x_ref))
            if self.spec.weak:
                images, row["decode_s"] = decode_samples(base, x, self.device)  # latent models
                row["metric_space"] = "state" if images is None else "decoded"
                quality = self.quality(base, x, self.spec.blocks, images=images)
                note = quality.pop("note", None)
                row.update(quality)
                if note:                     # e.g. too few samples for the FID protocol
                    _note(row, note)
            if sol2 is not None and sol2["status"] == "ok":
                row["nonconv"] = nonconv(x, sol2["x"])
        except UserError:
            raise
        except OSError as exc:
            if storage_error(exc):  # a full disk (a cache write): stop the run, record nothing
                raise
            row.update(status="failed", message=_failure(exc))
        except _CellFailed as exc:  # the solve failed (its message says where)
            row.update(status="failed", message=str(exc))
        except Exception as exc:  # the cell fails, the matrix goes on
            row.update(status="failed", message=_failure(exc))
        return row

    def _lock(self):
        """An exclusive advisory lock on DIR/.lock: two runs never write one directory."""
        import fcntl
        import os

        fh = open(self.out / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise UserError("--out", str(self.out), hint=f"another samplerbench run (pid "
                            f"{holder}) is writing to this directory; wait for it or choose "
                            f"another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    def _remove_partial_files(self) -> None:
        """Temporaries of a run killed inside a write (a cache, run.json): removed, with one
        warning line (this process holds the lock, so no writer is alive)."""
        import sys

        gone = [f"cache/{n}" for n in remove_partial_files(self.out / "cache")]
        gone = remove_partial_files(self.out) + gone
        if gone:
            print(f"samplerbench: warning: {self.out}: removed {len(gone)} partial "
                  f"file{'s' * (len(gone) != 1)} left by an interrupted run "
                  f"({', '.join(gone)})", file=sys.stderr)

    def run(self) -> dict:
        cells = expand_cells(self.spec, str(self.device.type))
        lock = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            lock = self._lock()
        threads = torch.get_num_threads()
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        try:
            return self._run(cells)
        finally:
            torch.set_num_threads(threads)
            if lock is not None:
                lock.close()

    def _run(self, cells) -> dict:
        main = self.dist.is_main
        done: set = set()
        if main:
            if not self.resume and self.store.path.exists():
                self.store.path.unlink()
            self._remove_partial_files()
            self.store.repair()
            done = self.store.done_ids(self.spec.max_nfe, cells) if self.resume else set()
            # cells of solvers named by --recompute run again (a fix, a new status rule); their
            # new rows supersede the old ones (rows.jsonl stays append-only)
            done -= {c.case_id for c in cells if c.solver.name in self.recompute}
            if self.recompute_if:
                done -= {r["case_id"] for r in latest_rows(read_rows(self.store.path))
                         if any(_holds(r, *cond) for cond in self.recompute_if)}
            self._write_run_json()
        done = self.dist.broadcast(done)                    # every rank runs the same cells
        todo = [c for c in cells if c.case_id not in done]
        progress = self._progress = Progress(len(cells), enabled=self.progress_enabled and main,
                                             work=[plan_cell(c, self.spec) for c in todo])
        progress.done = len(cells) - len(todo)
        counts: dict[str, int] = {}
        for cell in todo:
            progress.start(cell.label)
            row = self.run_cell(cell)
            if main:
                self.store.append(row)
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            progress.finish_cell()
        ids = {c.case_id for c in cells}
        matrix_status: dict[str, int] = {}
        if main:
            for r in latest_rows(read_rows(self.store.path)):
                if r.get("case_id") in ids:
                    matrix_status[r["status"]] = matrix_status.get(r["status"], 0) + 1
        matrix_status = self.dist.broadcast(matrix_status)
        summary = {"cells": len(cells), "reused": len(cells) - len(todo), "computed": len(todo),
                   **counts, "matrix_status": matrix_status, "out": str(self.out),
                   "rank": self.dist.rank, "world": self.dist.world}
        parts = ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing to do"
        progress.close(f"{len(cells)} cells: {len(cells) - len(todo)} reused from rows.jsonl, "
                       f"{len(todo)} computed ({parts}) -> {self.store.path}")
        return summary


def _holds(row: dict, key: str, op: str, value: float) -> bool:
    """``row[key] op value`` for a numeric field (False where the row has no number there)."""
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return v > value if op == ">" else v < value if op == "<" else v == value


def run_spec(spec: Spec, out_dir: str | Path | None = None, device: str | None = None,
             resume: bool = True, progress: bool = True, recompute: tuple = (),
             recompute_if: tuple = ()) -> dict:
    """Library entry point of ``samplerbench run``."""
    out = Path(out_dir) if out_dir else Path("results") / spec.name
    runner = Runner(spec, out, device=device, resume=resume, progress=progress,
                    recompute=recompute, recompute_if=recompute_if)
    try:
        return runner.run()
    finally:
        runner.dist.close()


def rows(out_dir: str | Path) -> list[dict]:
    return latest_rows(read_rows(Path(out_dir) / "rows.jsonl"))
