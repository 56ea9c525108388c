"""Check a tuned grid on a trained network against a fine solve: is it closer to the ODE's
solution than the start grid, and by how much (``refine`` is a proxy; this is the check).

    python -m samplerbench.bench.tune_check TUNED.json [TUNED.json ...] [--out FILE.json]
        [--seed 64] [--n 64] [--fine-steps 400]

For each file written by ``tune-grid`` (model, solver and steps from its metadata): from
x_init = sigma(t_start) z of seeds ``seed .. seed + n - 1`` (default: the file's held-out seeds),
err_rms of the solver on the start grid and on the tuned grid against ``dpmpp_2m`` on a
``fine-steps``-step karras grid from the same x_init (its own error is printed: the same fine
solve at half the steps against it), in the model's dtype; the paired difference tuned - start
+- its delete-one-block jackknife se over 8 seed blocks (``bench/stats.py``).  A stand-in for
the float64 dopri8 reference, whose ~7,000 model calls per seed are too slow on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from samplerbench.bench.metrics import per_sample_rms
from samplerbench.bench.stats import default_blocks, jackknife, paired
from samplerbench.bench.tune import reference_endpoint
from samplerbench.models.errors import UserError
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver
from samplerbench.solvers.grids import load_grid_file, make_grid


def check(path: str, seed: int | None = None, n: int | None = None,
          fine_steps: int = 400) -> dict:
    meta = json.loads(open(path.lstrip("@")).read()).get("metadata") or {}
    if not {"model", "solver", "steps", "start_values"} <= set(meta):
        raise UserError("TUNED.json", path, hint="a file written by tune-grid (with metadata)")
    name, params = load_grid_file(path if path.startswith("@") else f"@{path}")
    den = load_model(meta["model"])
    s = get_solver(meta["solver"], **meta.get("solver_params", {}))
    steps = meta["steps"]
    start = make_grid("list", den.schedule, steps, values=meta["start_values"], space="t")
    tuned = make_grid(name, den.schedule, steps, **params)
    held = meta.get("seeds_held_out", {})
    seed = held.get("first", 0) if seed is None else seed
    n = held.get("count", 64) if n is None else n
    x_init, _ = reference_endpoint(meta["model"], den, start, seed, n,
                                   meta.get("dtype", "float32"), need_ref=False)
    dyn = s.make_dynamics(den)
    fine_solver = get_solver("dpmpp_2m")
    fine = fine_solver.solve(dyn, x_init.clone(),
                             make_grid("karras", den.schedule, fine_steps)).x
    half = fine_solver.solve(dyn, x_init.clone(),
                             make_grid("karras", den.schedule, fine_steps // 2)).x
    blocks = default_blocks(n)
    errs = {g: per_sample_rms(s.solve(dyn, x_init.clone(), grid).x, fine)
            for g, grid in (("start", start), ("tuned", tuned))}
    st = {g: jackknife(lambda v: float(v.mean()), e, blocks) for g, e in errs.items()}
    t = paired(st["tuned"]["value"], st["tuned"]["blocks"], st["start"]["value"],
               st["start"]["blocks"])
    return {"file": path, "model": meta["model"], "solver": meta["solver"], "steps": steps,
            "seeds": {"first": seed, "count": n}, "fine": f"dpmpp_2m, karras, {fine_steps} steps",
            "fine_err": float(per_sample_rms(half, fine).mean()),
            "start": st["start"]["value"], "start_se": st["start"]["se"],
            "tuned": st["tuned"]["value"], "tuned_se": st["tuned"]["se"],
            "diff": t["diff"], "diff_se": t["se"], "p": t["p"],
            "refine_held_out": (meta.get("errors") or {}).get("held_out")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m samplerbench.bench.tune_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="tune-grid output files")
    p.add_argument("--out", help="write the results here (.json)")
    p.add_argument("--seed", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--fine-steps", type=int, default=400)
    args = p.parse_args(argv)
    try:
        res = []
        for f in args.files:
            r = check(f, args.seed, args.n, args.fine_steps)
            res.append(r)
            ref = r["refine_held_out"] or {}
            print(f"{r['model']} {r['solver']} {r['steps']} steps: err vs fine solve "
                  f"start {r['start']:.4f} tuned {r['tuned']:.4f}, paired {r['diff']:+.4f} ± "
                  f"{r['diff_se']:.4f} ({r['diff'] / r['start']:+.0%}); refine proxy said "
                  f"{ref.get('diff', float('nan')) / ref.get('start', float('nan')):+.0%}; "
                  f"fine solve's own error {r['fine_err']:.1e}", flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(res, fh, indent=1)
        return 0
    except (UserError, OSError, json.JSONDecodeError) as exc:
        sys.stderr.write(f"tune_check: error: {exc}\n")
        return 2


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
