"""Tuned grids against the fixed ones: a markdown table of held-out err_rms.

    python -m samplerbench.bench.tune_table --out FILE.md [--models gmm2d,gmm64,...]
        [--solvers dpmpp_2m,unipc_bh2,euler,heun,ipndm] [--nfe 4,6,8,10]
        [--grids ays,kl_optimal,beta,logsnr] [--seeds-cal 64] [--seeds-eval 256] [--maxfev N]
        [--rows FILE.jsonl] [--grid-dir DIR]
    python -m samplerbench.bench.tune_table --out FILE.md --from-rows A.jsonl [B.jsonl ...]

For every (model, solver, NFE budget): the step count N is the largest within the budget on
karras (``bench/budgets.py``); ``tune-grid`` (``bench/tune.py``, reference objective, ends fixed)
tunes the N - 2 interior points on the calibration seeds; then every grid -- karras, tuned and the
fixed ones named by ``--grids`` (``ays`` is taken with ``model=svd``, the one table that spans
any schedule's sigma/alpha range) -- is solved with N steps from the same held-out seeds (never
the calibration ones) and its err_rms measured against the float64 reference of karras's interval
(t_start -> t_min, then the denoise step) from the same x_init: the sample the exact ODE gives for
that noise.  This differs from the runner's err_rms only for grids that end elsewhere (``beta``
ends at t = 7.3 on EDM at 6 steps): the runner measures them against a reference with their own
denoise step, which hides the cost of stopping early.  A grid that starts elsewhere (``beta`` at
t = 1 on rectified flow, karras at sigma_max = 80, t = 80/81) starts from another x_init; it is
measured against its own interval's reference and marked with a dagger (not like-for-like).

Each entry is the mean over held-out seeds +- its standard error (delete-one-block jackknife over
8 seed blocks, ``bench/stats.py``); the ``tuned vs karras`` column is the paired difference
(tuned - karras, per seed, same blocks) relative to karras, +- its standard error.  Cells with
N < 3 (nothing interior to tune: Heun at 4 NFE) are left out.

Cost (one core, measured at the defaults: 64 calibration + 256 held-out seeds, at most 150
evaluations per parameter + 150): dpmpp_2m at 10 NFE (8 parameters, all 1352 evaluations) took
~15 s CPU on gmm2d and ~40 s on gmm64; gmm64 with euler and heun at 4-10 NFE (7 cells, Nelder-Mead
converging early for both) took 54 s CPU together, including the model load and the 256-seed
reference.  Extrapolated from these, the full default table (6 models x 5 solvers x 4 budgets,
114 cells) is 20-30 min of CPU on one idle core; wall time grows with the machine's load (2.5-4x
on the shared 2-core machine).  ``--maxfev`` caps it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from samplerbench.bench.metrics import per_sample_rms
from samplerbench.bench.stats import default_blocks, jackknife, paired
from samplerbench.bench.tune import reference_endpoint, tune_grid
from samplerbench.models.errors import UserError
from samplerbench.models.zoo import is_analytic, load_model
from samplerbench.solvers import get_solver
from samplerbench.solvers.grids import make_grid

MODELS = ("gmm2d", "gmm64", "gmm2d-vp", "gmm64-vp", "gmm2d-rf", "gmm64-rf")
SOLVERS = ("dpmpp_2m", "unipc_bh2", "euler", "heun", "ipndm")
NFE = (4, 6, 8, 10)
GRIDS = ("ays", "kl_optimal", "beta", "logsnr")
GRID_PARAMS = {"ays": {"model": "svd"}}


def _errors(model, den, solver, grid, ref_grid, first, count) -> torch.Tensor:
    """Per-seed err_rms of ``solver`` on ``grid`` from x_init = sigma(t_start) z against the
    float64 reference of ``ref_grid``'s interval (the same start)."""
    x_init, x_ref = reference_endpoint(model, den, ref_grid, first, count, "float64")
    sol = solver.solve(solver.make_dynamics(den), x_init.clone(), grid)
    if sol.status != "ok" or not torch.isfinite(sol.x).all():
        return torch.full((count,), float("inf"), dtype=torch.float64)
    return per_sample_rms(sol.x, x_ref.to(sol.x.device))


def _stat(e: torch.Tensor, blocks) -> dict:
    j = jackknife(lambda v: float(v.mean()), e, blocks)
    return {"mean": j["value"], "se": j["se"], "blocks": j["blocks"]}


def table_cell(model, den, solver_name, budget, grids, seeds_cal, seeds_eval, maxfev,
               seed=0) -> dict | None:
    """One (model, solver, budget): tune, then held-out err_rms of every grid; None when the
    budget leaves no interior point."""
    try:
        spec = tune_grid(model, solver_name, nfe=budget, seeds_cal=seeds_cal,
                         seeds_eval=seeds_eval, seed=seed, objective="reference", maxfev=maxfev,
                         den=den)
    except UserError as exc:
        if exc.field in ("--nfe", "--steps"):
            return None
        raise
    meta = spec["metadata"]
    steps = meta["steps"]
    s = get_solver(solver_name)
    first = meta["seeds_held_out"]["first"]
    karras = make_grid("karras", den.schedule, steps)
    tuned = make_grid("list", den.schedule, steps, values=spec["values"], space="t")
    blocks = default_blocks(seeds_eval)
    per = {"karras": _errors(model, den, s, karras, karras, first, seeds_eval),
           "tuned": _errors(model, den, s, tuned, karras, first, seeds_eval)}
    other_interval = []
    for g in grids:
        grid = make_grid(g, den.schedule, steps, **GRID_PARAMS.get(g, {}))
        ref = karras
        if grid.t_start != karras.t_start:       # another x_init: its own reference
            other_interval.append(g)
            ref = grid
        per[g] = _errors(model, den, s, grid, ref, first, seeds_eval)
    stats = {g: _stat(e, blocks) for g, e in per.items()}
    k = stats["karras"]
    for g, st in stats.items():
        if g != "karras" and st["blocks"] and k["blocks"]:
            t = paired(st["mean"], st["blocks"], k["mean"], k["blocks"])
            st.update(diff=t["diff"], diff_se=t["se"], p=t["p"])
    return {"model": model, "solver": solver_name, "nfe_budget": budget, "steps": steps,
            "nfe": meta["nfe"], "seeds_calibration": meta["seeds_calibration"],
            "seeds_held_out": meta["seeds_held_out"], "tuned_values": spec["values"],
            "evaluations": meta["optimizer"]["evaluations"], "tune_s": meta["wall_s"],
            "other_interval": other_interval, "spec": spec,
            "errors": {g: {k2: v for k2, v in st.items() if k2 != "blocks"}
                       for g, st in stats.items()}}


def _fmt(st: dict) -> str:
    if st["mean"] == float("inf"):
        return "diverged"
    se = f" ± {st['se']:.1e}" if st.get("se") is not None else ""
    return f"{st['mean']:.3e}{se}"


def markdown(rows: list[dict], grids, header: str = "") -> str:
    cols = ["model", "solver", "NFE", "N", "karras", "tuned", "tuned vs karras"] + list(grids)
    lines = [header] if header else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        e = r["errors"]
        k, t = e["karras"], e["tuned"]
        rel = (f"{t['diff'] / k['mean']:+.1%} ± {t['diff_se'] / k['mean']:.1%}"
               if t.get("diff_se") is not None and k["mean"] else "")
        vals = [r["model"], r["solver"], str(r["nfe"]), str(r["steps"]), _fmt(k), _fmt(t), rel]
        for g in grids:
            vals.append(_fmt(e[g]) + (" †" if g in r["other_interval"] else ""))
        best = min(range(4, len(vals)), key=lambda i: _mean(e, cols[i], r["other_interval"]))
        vals[best] = f"**{vals[best]}**"
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _mean(e, col, other_interval):
    if col == "tuned vs karras" or col in other_interval:
        return float("inf")
    return e[col]["mean"]


def paired_counts(rows: list[dict], grids, level: float = 0.05) -> str:
    """Per grid (tuned and ``grids``): in how many cells it is significantly better than karras,
    not separated from it, or significantly worse (paired test on the held-out seeds, two-sided
    ``level``), with the median relative difference; cells where the grid starts elsewhere
    (another x_init) are counted apart."""
    cols = ["tuned"] + [g for g in grids if g != "tuned"]
    lines = [f"| grid vs karras | better (p < {level:g}) | not separated | worse (p < {level:g}) "
             "| other start | median change |", "|---|---|---|---|---|---|"]
    for g in cols:
        better = same = worse = other = 0
        rel = []
        for r in rows:
            st, k = r["errors"].get(g), r["errors"]["karras"]
            if st is None:
                continue
            if g in r.get("other_interval", []):
                other += 1
                continue
            if st.get("p") is None:
                continue
            rel.append(st["diff"] / k["mean"] if k["mean"] else float("nan"))
            if st["p"] >= level:
                same += 1
            elif st["diff"] < 0:
                better += 1
            else:
                worse += 1
        med = f"{sorted(rel)[len(rel) // 2]:+.0%}" if rel else ""
        lines.append(f"| {g} | {better} | {same} | {worse} | {other} | {med} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m samplerbench.bench.tune_table",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--from-rows", nargs="+", metavar="FILE.jsonl",
                   help="compute nothing: rebuild the table from rows files written by --rows "
                   "(e.g. of runs split by model)")
    p.add_argument("--rows", help="also write one JSON row per cell here (.jsonl)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--nfe", default=",".join(map(str, NFE)))
    p.add_argument("--grids", default=",".join(GRIDS))
    p.add_argument("--seeds-cal", type=int, default=64)
    p.add_argument("--seeds-eval", type=int, default=256)
    p.add_argument("--maxfev", type=int, help="evaluations per tuning (default tune-grid's)")
    p.add_argument("--grid-dir", help="also write each tuned grid spec (tune-grid's JSON, for "
                   "--grid @FILE.json) here as MODEL_SOLVER_nfeB.json")
    args = p.parse_args(argv)
    try:
        from samplerbench.bench.store import atomic_write_text, check_out_file

        out = check_out_file(args.out, "--out")
        rows_path = check_out_file(args.rows, "--rows") if args.rows else None
        if rows_path:
            rows_path.parent.mkdir(parents=True, exist_ok=True)
            rows_path.write_text("")                 # this run's rows only
        models = [m for m in args.models.split(",") if m]
        for m in models:
            if not is_analytic(m):
                raise UserError("--models", m, hint="analytic models only (the table needs the "
                                "float64 reference on every held-out seed)")
        budgets = [int(b) for b in args.nfe.split(",") if b]
        grids = [g for g in args.grids.split(",") if g]
        t0 = time.perf_counter()
        rows = []
        for path in args.from_rows or []:
            try:
                rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line]
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError("--from-rows", path, hint=f"a .jsonl file written by --rows: "
                                f"{exc}") from None
        for m in models if not args.from_rows else []:
            den = load_model(m)
            for s in [x for x in args.solvers.split(",") if x]:
                for b in budgets:
                    c0 = time.perf_counter()
                    row = table_cell(m, den, s, b, grids, args.seeds_cal, args.seeds_eval,
                                     args.maxfev)
                    if row is None:
                        print(f"{m} {s} nfe<={b}: no interior point, skipped", file=sys.stderr)
                        continue
                    row["cell_s"] = round(time.perf_counter() - c0, 2)
                    spec = row.pop("spec")
                    if args.grid_dir:
                        gdir = Path(args.grid_dir)
                        gdir.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(gdir / f"{m}_{s}_nfe{row['nfe']}.json",
                                          json.dumps(spec, indent=1) + "\n")
                    rows.append(row)
                    e = row["errors"]
                    print(f"{m} {s} {row['nfe']} NFE: karras {e['karras']['mean']:.3e} tuned "
                          f"{e['tuned']['mean']:.3e} ({row['cell_s']:.1f} s)", file=sys.stderr,
                          flush=True)
                    if rows_path:
                        with open(rows_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
        total = (sum(r.get("cell_s", 0.0) for r in rows) if args.from_rows
                 else time.perf_counter() - t0)
        if args.from_rows and rows:
            args.seeds_eval = rows[0]["seeds_held_out"]["count"]
            args.seeds_cal = rows[0]["seeds_calibration"]["count"]
        header = (f"Held-out err_rms ({args.seeds_eval} seeds after {args.seeds_cal} calibration "
                  f"seeds; mean ± jackknife se over seed blocks), tuned by `tune-grid` "
                  f"(reference objective, Nelder-Mead) vs fixed grids; bold: lowest; †: another "
                  f"start, so another x_init and reference (not like-for-like, never bold). "
                  f"{len(rows)} cells, {total:.0f} s.\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, markdown(rows, grids, header)
                          + "\nPaired tests against karras on the held-out seeds, over the "
                          f"{len(rows)} cells:\n\n" + paired_counts(rows, grids))
        print(f"wrote {out}: {len(rows)} cells in {total:.0f} s")
        return 0
    except UserError as exc:
        sys.stderr.write(f"tune_table: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
