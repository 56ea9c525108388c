"""Grids against a baseline grid on the same seeds: a markdown table from run directories.

    python -m samplerbench.bench.grid_table RUN_DIR [RUN_DIR ...] --out FILE.md
        [--metric fid] [--baseline karras] [--name list=tuned]

For every (model, solver, steps, NFE) the rows of the runs (``rows.jsonl``, latest row per cell)
are compared grid by grid: each entry is the metric +- its jackknife standard error over the seed
blocks (``fid_se``), the paired difference against the baseline grid's cell on the same seeds
(delete-one-block jackknife of the per-block differences, Student t with blocks - 1 degrees of
freedom, ``bench/stats.py``), its two-sided p, and the rank group of the grid among the grids of
that (model, solver, steps) (``stats.rank_groups``, as the report's solver ranking).  The
floor (the metric of real data at the same sample count, ``fid_floor`` +- sd) is printed beside
each model's table: a difference between two cells both within a few sd of it says little.

A grid is named by its name and its non-default parameters; ``--name list=tuned`` renames a grid
(e.g. the ``list`` grids a ``tune-grid`` file gives).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samplerbench.bench import stats
from samplerbench.bench.report import solver_label
from samplerbench.bench.store import atomic_write_text, latest_rows, read_rows
from samplerbench.models.errors import UserError


def _blocks(r: dict, metric: str):
    b = r.get(f"{metric}_blocks")
    return json.loads(b) if isinstance(b, str) else b


def grid_label(r: dict, names: dict) -> str:
    name = names.get(r["grid"], r["grid"])
    params = {k: v for k, v in (r.get("grid_params") or {}).items()
              if r["grid"] != "list" and not (k == "rho" and v == 7.0)}
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def compare(rows: list[dict], metric: str = "fid", baseline: str = "karras",
            names: dict | None = None) -> list[dict]:
    """One entry per cell with ``value``, ``se``, ``diff``/``diff_se``/``p`` against the baseline
    grid of the same (model, solver and its parameters and noise, steps, nfe, seed,
    n_samples) and ``group`` (rank group
    among the grids of that key)."""
    names = names or {}
    groups: dict = {}
    for r in rows:
        if r.get("status") != "ok" or r.get(metric) is None:
            continue
        solver = solver_label(r["solver"], r.get("solver_params"))      # non-default params
        solver += f" [{r['noise']}]" if r.get("noise") else ""
        key = (r["model"], solver, r["steps"], r["nfe"], r["seed"], r["n_samples"])
        groups.setdefault(key, []).append(r)
    out = []
    for key, cells in groups.items():
        base = [c for c in cells if grid_label(c, names) == baseline]
        entries = [{"value": c[metric], "blocks": _blocks(c, metric)} for c in cells]
        ranks = stats.rank_groups(entries)
        for c, e, g in zip(cells, entries, ranks):
            d = {"model": key[0], "solver": key[1], "steps": key[2], "nfe": key[3],
                 "seed": key[4], "n_samples": key[5], "grid": grid_label(c, names),
                 "value": e["value"], "se": c.get(f"{metric}_se"), "group": g,
                 "floor": c.get(f"{metric}_floor"), "floor_sd": c.get(f"{metric}_floor_sd"),
                 "diff": None, "diff_se": None, "p": None}
            if base and base[0] is not c and e["blocks"] and _blocks(base[0], metric):
                t = stats.paired(e["value"], e["blocks"], base[0][metric],
                                 _blocks(base[0], metric))
                d.update(diff=t["diff"], diff_se=t["se"], p=t["p"])
            out.append(d)
    out.sort(key=lambda d: (d["model"], d["solver"], d["nfe"], d["value"]))
    return out


def markdown(entries: list[dict], metric: str = "fid", baseline: str = "karras") -> str:
    lines = []
    for model in dict.fromkeys(e["model"] for e in entries):
        es = [e for e in entries if e["model"] == model]
        f = next((e for e in es if e["floor"] is not None), None)
        floor = (f" Floor ({metric} of {f['n_samples']} real samples against the reference, "
                 f"mean ± sd): {f['floor']:.3g} ± {f['floor_sd']:.2g}." if f else "")
        lines += [f"### {model}", "",
                  f"_{metric} ± se over seed blocks; `vs {baseline}`: paired difference ± se "
                  f"(same seeds) and its two-sided p; g: rank group among the grids of the same "
                  f"solver and NFE (group 1: the best cell and every cell a paired test does not "
                  f"separate from it; the best cell left opens the next group; a cell with the "
                  f"higher {metric} can be in the better group when its paired difference to the "
                  f"group's best is the noisier one).{floor}_", "",
                  f"| solver | NFE | grid | {metric} | vs {baseline} | p | g |",
                  "|---|---|---|---|---|---|---|"]
        for e in es:
            se = f" ± {e['se']:.2f}" if e["se"] is not None else ""
            diff = (f"{e['diff']:+.2f} ± {e['diff_se']:.2f}" if e["diff_se"] is not None
                    else ("—" if e["grid"] == baseline else ""))
            p = f"{e['p']:.3f}" if e["p"] is not None else ""
            lines.append(f"| {e['solver']} | {e['nfe']} | {e['grid']} | {e['value']:.2f}{se} | "
                         f"{diff} | {p} | g{e['group']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m samplerbench.bench.grid_table",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (with rows.jsonl)")
    p.add_argument("--out", required=True, help="markdown file to write")
    p.add_argument("--metric", default="fid")
    p.add_argument("--baseline", default="karras")
    p.add_argument("--name", action="append", default=[], metavar="GRID=LABEL",
                   help="show grid GRID as LABEL (repeatable), e.g. list=tuned")
    args = p.parse_args(argv)
    try:
        names = {}
        for item in args.name:
            if "=" not in item:
                raise UserError("--name", item, hint="GRID=LABEL, e.g. list=tuned")
            k, v = item.split("=", 1)
            names[k] = v
        rows = []
        for d in args.runs:
            path = Path(d) / "rows.jsonl"
            if not path.exists():
                raise UserError("RUN_DIR", d, hint="no rows.jsonl there")
            rows += latest_rows(read_rows(path))
        entries = compare(rows, args.metric, args.baseline, names)
        if not entries:
            raise UserError("--metric", args.metric, hint="no ok rows carry it in these runs")
        bad = [f"- {r['model']} {solver_label(r['solver'], r.get('solver_params'))} "
               f"{r['nfe']} NFE, grid {grid_label(r, names)}: {r['status']} ({r['message']})"
               for r in rows if r.get("status") != "ok"]
        text = markdown(entries, args.metric, args.baseline)
        if bad:
            text += "\nCells left out (not ok):\n\n" + "\n".join(bad) + "\n"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
        print(f"wrote {out}: {len(entries)} cells")
        return 0
    except UserError as exc:
        sys.stderr.write(f"grid_table: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
