"""``samplerbench`` / ``python -m samplerbench``: a thin CLI over the library.

Every command parses, makes one library call, prints.  Bad input exits with status 2 and one line
that names the field, the value and the valid choices.
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import sys
from pathlib import Path

from samplerbench.models.errors import UserError

EXAMPLES = """examples:
  samplerbench list solvers
  samplerbench run bench/matrices/quick.toml --out results/quick
  samplerbench run --models gmm64,gmm64-rf --solvers euler,heun,rk4 --steps 8,16,32 --grid karras
  samplerbench run --models gmm64 --solvers euler,heun,dpmpp_2m --nfe 6,8,10 --samples 256
  samplerbench sample gmm2d heun --steps 18 --n 512 --out samples.npz
  samplerbench sample gmm64 euler_ancestral --steps 32 --noise brownian --solver-opt eta=0.5 --out x.npz
  samplerbench sample gmm64 dpmpp_2m --steps 10 --grid karras --grid-opt rho=5 --out x.npz
  samplerbench sample diffusers:./my-ddim-pipeline --like-diffusers --steps 25 --out x.npz
  samplerbench sample gmm64 euler --steps 4 --grid list --grid-opt values=80,10,1,0.1 \
      --grid-opt space=ratio --x-init z.npy --out x.npz
  samplerbench run --models gmm64 --solvers unipc_bh2 --solver-opt solver_order=3 --steps 8 \
      --grid @my_grid.json --error on
  samplerbench report results/quick --format md,csv,html,parquet
  samplerbench check-solver dpmpp_2m
  samplerbench tune-grid gmm64 dpmpp_2m --nfe 6 --out tuned.json
"""

TUNE_EXAMPLES = """examples:
  samplerbench tune-grid gmm64 dpmpp_2m --nfe 6 --out tuned.json
  samplerbench sample gmm64 dpmpp_2m --steps 6 --grid @tuned.json --out x.npz
  samplerbench tune-grid gmm2d heun --steps 5 --free-ends --seeds-cal 128 --out heun5.json
  samplerbench tune-grid moons-rf euler --steps 8 --objective refine --out moons8.json
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        sys.stderr.write(f"samplerbench: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered.lstrip("+-") in ("nan", "inf", "infinity"):
            return float(lowered)        # a number, for the solver's own check to judge
        return text


ERROR_MODES = {"on": True, "off": False, "analytic": "analytic"}


def _count(text: str) -> int:
    """An integer argument; 1e9 is read as 1000000000, so the range check can name the limit."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not v.is_integer():
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}")
    return int(v)


def _kv(items, field: str) -> dict:
    """``--solver-opt`` / ``--grid-opt`` items ``key=value``: numbers, true/false, strings;
    ``a,b,c`` is a list (``--grid-opt values=80,10,1,0.1``)."""
    out = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(field, item, hint="expected key=value")
        k, v = item.split("=", 1)
        v = v.strip()
        out[k.strip()] = [_value(x.strip()) for x in v.split(",")] if "," in v else _value(v)
    return out


def _grid_opts(items) -> dict:
    opts = _kv(items, "--grid-opt")
    if "values" in opts and not isinstance(opts["values"], list):
        opts["values"] = [opts["values"]]            # one value: still a list
    return opts


# --------------------------------------------------------------------------------------------

def cmd_list(args) -> int:
    what = args.what
    if what in ("solvers", "all"):
        from samplerbench.solvers.registry import available_solvers, solver_class

        print(f"{'solver':<20} {'kind':<4} {'order':>5} {'NFE/step':>8} {'adaptive':>8}  reference")
        for name in available_solvers():
            c = solver_class(name)
            order = c.order if c.kind == "ode" else (c.strong_order or c.weak_order)
            order = "-" if order is None else f"{order:g}"
            nfe = "-" if c.stages is None else str(c.stages)
            kind = c.kind + ("*" if c.stochastic else "")
            print(f"{name:<20} {kind:<4} {order:>5} {nfe:>8} {'yes' if c.adaptive else 'no':>8}  "
                  f"{c.reference}")
        if what == "all":
            print()
    if what in ("models", "all"):
        from samplerbench.models.zoo import model_entries

        print(f"{'model':<16} {'schedule':<10} description")
        for e in model_entries():
            print(f"{e.name:<16} {e.schedule:<10} {e.description}")
        from samplerbench.models.zoo import SPEC_FORM_HELP

        print("\nyour own models (options follow '?', joined by '&'; e.g. "
              "edm:m.py:make?shape=3,32,32&sigma_max=80):")
        print(f"{'form':<18} {'options':<34} description")
        for f in SPEC_FORM_HELP:
            print(f"{f.form:<18} {f.options:<34} {f.description}")
            print(f"{'':<18} example: {f.example}")
        if what == "all":
            print()
    if what in ("grids", "all"):
        from samplerbench.solvers.grids import available_grids, grid_doc

        print(f"{'grid':<16} {'params':<20} description")
        for name in available_grids():
            params, doc = grid_doc(name)
            p = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in params.items()) or "-"
            print(f"{name:<16} {p:<20} {doc}")
        print(f"{'auto':<16} {'-':<20} the model's recommended grid (a diffusers flow-matching "
              "folder: shift with its config's shift), else karras")
        print(f"{'@FILE.json':<16} {'(any)':<20} a grid spec from a JSON file: "
              '{"name": ..., <params>}')
    return 0


def cmd_run(args) -> int:
    from samplerbench.bench.runner import run_spec
    import dataclasses

    from samplerbench.bench.spec import (load_spec, parse_compile, parse_csv_floats, parse_csv_ints,
                            parse_spec)

    if args.spec and (args.models or args.solvers):
        raise UserError("run", args.spec, hint="give a SPEC.toml or --models/--solvers, not both")
    if args.spec:
        for flag, given in (("--grid-opt", args.grid_opt), ("--solver-opt", args.solver_opt),
                            ("--error", args.error)):
            if given:
                raise UserError(flag, given, hint=f"an ad-hoc flag: with {args.spec} set it in "
                                "the spec (grids / solvers tables, [metrics] error)")
        spec = load_spec(args.spec)
    else:
        if not args.models or not args.solvers:
            raise UserError("run", None, hint="give SPEC.toml, or --models and --solvers")
        solver_opts = _kv(args.solver_opt, "--solver-opt")
        grid_opts = _grid_opts(args.grid_opt)
        raw = {"name": args.name or "adhoc",
               "models": [m for m in args.models.split(",") if m],
               "solvers": [{"name": s, **solver_opts} for s in args.solvers.split(",") if s],
               "grids": [{"name": g, **grid_opts} for g in (args.grid or "auto").split(",") if g],
               "samples": args.samples if args.samples is not None else 64,
               "seed": args.seed if args.seed is not None else 0,
               "final": args.final or "zero",
               "noise": [n for n in (args.noise or "fresh").split(",") if n],
               "dtype": args.dtype or "float32"}
        if args.steps:
            raw["steps"] = parse_csv_ints("--steps", args.steps)
        if args.nfe:
            raw["nfe"] = parse_csv_ints("--nfe", args.nfe)
        # a trained network's float64 reference costs thousands of model calls: by default
        # err_rms is measured for analytic models only (--error on to pay for it)
        raw["metrics"] = {"error": ERROR_MODES[args.error or "analytic"]}
        if args.blocks is not None:
            raw["metrics"]["blocks"] = args.blocks
        if args.tolerances:
            raw["tolerances"] = parse_csv_floats("--tolerances", args.tolerances)
        spec = parse_spec(raw)
    if args.compile is not None:
        spec = dataclasses.replace(spec, compile=parse_compile(args.compile, "--compile"))
    if args.max_nfe is not None:
        if args.max_nfe < 1:
            raise UserError("--max-nfe", args.max_nfe, hint="a positive number of model calls")
        spec = dataclasses.replace(spec, max_nfe=args.max_nfe)
    from samplerbench.bench.store import check_out_dir

    field = "--out" if args.out else f"--out (default, from the spec name {spec.name!r})"
    out = check_out_dir(args.out or Path("results") / spec.name, field)
    recompute = tuple(x for x in (args.recompute or "").split(",") if x)
    names = {x.name for x in spec.solvers}
    for name in recompute:
        if name not in names:
            raise UserError("--recompute", name, sorted(names),
                            hint="name solvers of this run's spec")
    recompute_if = tuple(_condition(c) for c in args.recompute_if or [])
    summary = run_spec(spec, out, device=args.device, resume=not args.no_resume,
                       progress=not args.quiet, recompute=recompute, recompute_if=recompute_if)
    status = summary["matrix_status"]          # over the whole matrix, reused cells included
    bad = {k: status[k] for k in ("failed", "diverged") if status.get(k)}
    if summary.get("rank", 0) != 0:                # torchrun: rank 0 reports
        return 1 if (args.strict and bad) else 0
    print(f"wrote {summary['out']}/rows.jsonl: {summary['cells']} cells "
          f"({summary['reused']} reused, {summary['computed']} computed"
          + "".join(f", {v} {k} in the matrix" for k, v in bad.items()) + ")")
    return 1 if (args.strict and bad) else 0


def cmd_sample(args) -> int:
    from samplerbench.bench.sample import sample_to_npz

    opts = _kv(args.solver_opt, "--solver-opt")
    if args.solver is None and not args.like_diffusers:
        raise UserError("sample SOLVER", None, hint="name a solver (samplerbench list solvers), "
                        "or --like-diffusers for a diffusers:PATH model")
    like = {}
    if args.like_diffusers:
        given = [f for f, v in (("SOLVER", args.solver), ("--grid", args.grid),
                                ("--grid-opt", args.grid_opt), ("--final", args.final),
                                ("--solver-opt", args.solver_opt)) if v is not None]
        if given:
            raise UserError("--like-diffusers", given[0], hint="it chooses the solver, grid, "
                            "final and solver options from the folder's scheduler config: "
                            "drop " + ", ".join(given))
        like = {"like_diffusers": True}
    info = sample_to_npz(args.model, args.solver, steps=args.steps,
                         grid=args.grid if args.grid is not None else "auto",
                         grid_params=_grid_opts(args.grid_opt),
                         final=args.final if args.final is not None else "zero", n=args.n,
                         seed=args.seed, noise=args.noise, solver_opts=opts, out=args.out,
                         dtype=args.dtype, device=args.device, x_init=args.x_init,
                         guidance=args.guidance, **like)
    if "like_diffusers" in info:
        print(info["like_diffusers"].line())
    grid = info["grid"] + "".join(f" {k}={v}" for k, v in info["grid_params"].items()
                                  if k != "values")
    images = " (latents x, decoded images)" if info.get("decoded") else ""
    print(f"wrote {args.out}: {info['n']} samples{images}, {info['nfe']} NFE, grid {grid}, "
          f"status {info['status']}")
    return 0 if info["status"] == "ok" else 1


def cmd_report(args) -> int:
    from samplerbench.bench.report import write_report
    from samplerbench.bench.store import check_out_dir, check_writable

    run_dir = Path(args.dir)
    if not run_dir.is_dir():
        raise UserError("report DIR", args.dir, hint="not a directory; give the --out of a run")
    if (run_dir / "report").exists():
        check_out_dir(run_dir / "report", "report DIR/report")
    else:
        check_writable(run_dir, "report DIR", args.dir)
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    out = write_report(args.dir, formats)
    print(f"wrote {out}")
    return 0


def cmd_tune_grid(args) -> int:
    from samplerbench.bench.store import check_out_file
    from samplerbench.bench.tune import summary_lines, tune_grid, write_grid_spec

    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError("--out", args.out, hint="the grid spec file must end in .json")
    check_out_file(out, "--out")                 # before any solve
    log = (lambda msg: None) if args.quiet else \
        (lambda msg: print(f"tune-grid: {msg}", file=sys.stderr, flush=True))
    spec = tune_grid(args.model, args.solver, steps=args.steps, nfe=args.nfe,
                     seeds_cal=args.seeds_cal, seeds_eval=args.seeds_eval, seed=args.seed,
                     fix_ends=args.fix_ends, objective=args.objective, optimizer=args.optimizer,
                     solver_opts=_kv(args.solver_opt, "--solver-opt"), init=args.init,
                     init_params=_grid_opts(args.init_opt), dtype=args.dtype,
                     maxfev=args.maxfev, device=args.device, log=log)
    write_grid_spec(spec, out)
    print("\n".join(summary_lines(spec)))
    print(f"wrote {out}: use --grid @{out} --steps {spec['metadata']['steps']}")
    return 0


def trainable() -> dict:
    """Names `samplerbench train` reproduces -> a function(out_dir, seed) -> checkpoint path."""
    from samplerbench.bench.fid import FEATURES_NAME, train_features

    names = {FEATURES_NAME: lambda out_dir, seed: train_features(out_dir, seed=seed)}
    try:
        from samplerbench.models.train import TRAINABLE, train
    except ImportError:
        return names
    for n in TRAINABLE:
        names[n] = lambda out_dir, seed, n=n: train(n, out_dir=out_dir, seed=seed)
    return names


def train_epilog() -> str:
    """``train --help``: the names, each with the training time its shipped card records
    (``train_seconds``, on the machine and threads it names)."""
    import json

    from samplerbench.models.nets import CHECKPOINT_DIR

    lines = ["names and training times (train_seconds of models/checkpoints/NAME.json, 1 torch "
             "thread;", "start-up adds more: `time samplerbench train digits-features` took 25 s "
             "wall on a busy 2-core CPU):"]
    for name in sorted(trainable()):
        try:
            card = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
            took = card.get("train_seconds")
        except (OSError, ValueError):
            took = None
        when = f"about {took:.0f} s" if isinstance(took, (int, float)) else "(no recorded time)"
        lines.append(f"  {name:<18} {when}")
    lines += ["", "examples:", "  samplerbench train digits-features --out /tmp/ckpt",
              "  samplerbench train moons-rf            # overwrites models/checkpoints/moons-rf.*"]
    return "\n".join(lines)


class _TrainParser(_Parser):
    def format_help(self):                 # the names and times are read only when asked for
        self.epilog = train_epilog()
        return super().format_help()


def cmd_train(args) -> int:
    names = trainable()
    if args.name not in names:
        raise UserError("train NAME", args.name, sorted(names))
    path = names[args.name](args.out, args.seed)
    print(f"wrote {path}")
    return 0


def cmd_preview(args) -> int:
    from pathlib import Path

    from samplerbench.models.train import preview

    out = Path(args.out)
    for model in [m for m in args.models.split(",") if m]:
        tag = "" if args.guidance is None else f"_w{args.guidance:g}"
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")    # diffusers:PATH -> a name
        path = preview(model, out / f"samples_{stem}{tag}.png", steps=args.steps,
                       solver=args.solver, grid=args.grid, n=args.n, seed=args.seed,
                       guidance=args.guidance)
        print(f"wrote {path}")
    return 0


def cmd_check(args) -> int:
    from samplerbench.bench.conformance import Check, check_solver
    from samplerbench.solvers import get_solver
    from samplerbench.solvers.registry import plugin_failure

    failure = plugin_failure(args.name)
    if failure:                                # a plugin that did not load: that is the report
        print(f"check-solver {args.name}\n{Check('load', False, failure).format()}\n"
              "result: NOT conformant", flush=True)
        return 1

    opts = _kv(args.solver_opt, "--solver-opt")
    print(f"check-solver {args.name} {get_solver(args.name, **opts).params()}", flush=True)
    rep = check_solver(args.name, opts, model=args.model,
                       on_check=lambda c: print(c.format(), flush=True))   # as each finishes
    print(rep.footer(), flush=True)
    return 0 if rep.passed else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="samplerbench", description="Benchmark diffusion / flow-matching samplers.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="list solvers, models or grids", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("what", nargs="?", default="all", choices=["solvers", "models", "grids", "all"])
    ls.set_defaults(fn=cmd_list)

    run = sub.add_parser("run", help="run a benchmark matrix", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("spec", nargs="?", help="matrix spec (TOML)")
    run.add_argument("--out", help="output directory (default results/<spec name>)")
    run.add_argument("--device", choices=["cpu", "cuda", "mps", "auto"], help="overrides the spec")
    run.add_argument("--no-resume", action="store_true", help="recompute every cell")
    run.add_argument("--recompute", metavar="SOLVER[,SOLVER]",
                     help="compute the finished cells of these solvers again (after a fix); "
                     "the new rows supersede the old")
    run.add_argument("--recompute-if", action="append", metavar="KEY>NUMBER",
                     help="compute again the finished cells whose row has KEY > (or <, =) "
                     "NUMBER, e.g. x_rms>8 (repeatable: any condition)")
    run.add_argument("--models", help="ad hoc: comma-separated model names")
    run.add_argument("--solvers", help="ad hoc: comma-separated solver names")
    run.add_argument("--steps", help="ad hoc: comma-separated step counts, e.g. 4,8,16")
    run.add_argument("--nfe", help="ad hoc: NFE budgets for fixed-step solvers, e.g. 6,8,10 "
                     "(each solver gets the largest step count within the budget)")
    run.add_argument("--blocks", type=int, help="ad hoc: seed blocks for the quality metrics' "
                     "standard errors (>= 2, dividing --samples)")
    run.add_argument("--tolerances", help="ad hoc: tolerances for adaptive solvers, e.g. 1e-3,1e-5")
    run.add_argument("--grid", help="ad hoc: grid name(s), 'auto' (default: the model's "
                     "recommended grid, e.g. a diffusers flow model's shift, else karras) or "
                     "@FILE.json")
    run.add_argument("--grid-opt", action="append", metavar="KEY=VALUE",
                     help="ad hoc, repeatable: a grid parameter, e.g. rho=5 or "
                     "values=80,10,1,0.1 (lists comma-separated)")
    run.add_argument("--solver-opt", action="append", metavar="KEY=VALUE",
                     help="ad hoc, repeatable: a parameter of every solver in --solvers")
    run.add_argument("--error", choices=sorted(ERROR_MODES),
                     help="ad hoc: err_rms against a float64 reference: on, off, or analytic "
                     "(default: analytic models only; a trained network's costs ~7000 calls)")
    run.add_argument("--final", choices=["zero", "t_min"], help="ad hoc: grid end")
    run.add_argument("--samples", type=int, help="ad hoc: samples per cell (default 64)")
    run.add_argument("--seed", type=int, help="ad hoc: base seed (default 0)")
    run.add_argument("--noise", help="ad hoc: noise modes for stochastic solvers (fresh,brownian)")
    run.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"])
    run.add_argument("--name", help="ad hoc: run name (default 'adhoc')")
    run.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                     help="torch.compile the model (default backend inductor; overrides the spec)")
    run.add_argument("--max-nfe", type=int, metavar="N",
                     help="stop a solve after N model calls and record the cell as failed "
                     "(overrides the spec's max_nfe; a rerun with a larger N recomputes it)")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--strict", action="store_true",
                     help="exit 1 at the end if any cell failed or diverged (the run still "
                     "completes every cell)")
    run.set_defaults(fn=cmd_run)

    sm = sub.add_parser("sample", help="draw samples with one solver into an .npz",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sm.add_argument("model")
    sm.add_argument("solver", nargs="?", help="a solver name (not with --like-diffusers)")
    sm.add_argument("--steps", type=_count, required=True)
    sm.add_argument("--like-diffusers", action="store_true",
                    help="diffusers:PATH only: the solver, grid, final and options equivalent to "
                    "the folder's own scheduler (scheduler_config.json) after set_timesteps(N); "
                    "prints the mapping and records it in the npz")
    sm.add_argument("--grid", help="grid name, 'auto' (default: the model's "
                    "recommended grid, else karras) or @FILE.json ({\"name\": ..., <params>})")
    sm.add_argument("--grid-opt", action="append", metavar="KEY=VALUE",
                    help="repeatable: a grid parameter, e.g. rho=5, or values=80,10,1,0.1 "
                    "space=ratio for --grid list")
    sm.add_argument("--final", choices=["zero", "t_min"], help="grid end (default zero)")
    sm.add_argument("--n", type=int, help="samples (default 64, or the rows of --x-init)")
    sm.add_argument("--x-init", metavar="Z.npy", help="standard-normal draw z [n, *data_shape] "
                    "instead of the seeded one (x_init = sigma(t_start) z)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance weight "
                    "w >= -1 of a class-conditional model (labels (seed + i) mod classes; "
                    "CFG++ samplers: lambda = 1 + w)")
    sm.add_argument("--noise", default="fresh", choices=["fresh", "brownian"])
    sm.add_argument("--solver-opt", action="append", metavar="KEY=VALUE")
    sm.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sm.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    sm.add_argument("--out", required=True, help="output .npz")
    sm.set_defaults(fn=cmd_sample)

    tg = sub.add_parser("tune-grid", help="optimise an N-step grid's interior points for a "
                        "model and solver; writes a grid spec for --grid @FILE.json",
                        epilog=TUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tg.add_argument("model")
    tg.add_argument("solver", help="a deterministic fixed-step solver")
    budget = tg.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=_count, help="steps N (N positive points, then t = 0)")
    budget.add_argument("--nfe", type=_count, help="an NFE budget: the largest N within it")
    tg.add_argument("--out", required=True, help="output grid spec (.json)")
    tg.add_argument("--seeds-cal", type=_count, default=64,
                    help="calibration seeds, from --seed (default 64)")
    tg.add_argument("--seeds-eval", type=_count, default=64,
                    help="held-out seeds, right after the calibration ones (default 64)")
    tg.add_argument("--seed", type=_count, default=0, help="first calibration seed (default 0)")
    ends = tg.add_mutually_exclusive_group()
    ends.add_argument("--fix-ends", dest="fix_ends", action="store_true", default=True,
                      help="keep the first and last points of the start grid (default)")
    ends.add_argument("--free-ends", dest="fix_ends", action="store_false",
                      help="also move the last positive point (above t_min)")
    tg.add_argument("--objective", default="auto", choices=["auto", "reference", "refine"],
                    help="reference: err_rms against the float64 reference; refine: distance "
                    "to a 2x-finer solve on the same grid (a proxy without a reference); auto "
                    "(default): reference on analytic models, refine on trained networks")
    tg.add_argument("--optimizer", default="nelder-mead", choices=["nelder-mead", "powell"])
    tg.add_argument("--maxfev", type=_count, help="objective evaluations at most "
                    "(default 150 per parameter + 150)")
    tg.add_argument("--init", default="auto", help="start grid (default auto: the model's "
                    "recommended grid, else karras); its ends are kept")
    tg.add_argument("--init-opt", action="append", metavar="KEY=VALUE",
                    help="repeatable: a parameter of the start grid, e.g. rho=5")
    tg.add_argument("--solver-opt", action="append", metavar="KEY=VALUE")
    tg.add_argument("--dtype", choices=["float32", "float64"],
                    help="solver state (default float64 on analytic models, else float32)")
    tg.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    tg.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    tg.set_defaults(fn=cmd_tune_grid)

    tr = sub.add_parser("train", help="reproduce a shipped checkpoint from its fixed seed",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.__class__ = _TrainParser
    tr.add_argument("name", help="a trainable name (listed below)")
    tr.add_argument("--out", help="output folder (default models/checkpoints)")
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(fn=cmd_train)

    pv = sub.add_parser("preview", help="sample grids / scatter plots of models (PNG)")
    pv.add_argument("models", help="comma-separated model names")
    pv.add_argument("--out", required=True, help="output folder (samples_<model>.png)")
    pv.add_argument("--solver", default="heun")
    pv.add_argument("--steps", type=int, default=64)
    pv.add_argument("--grid", default="karras")
    pv.add_argument("--n", type=int, help="samples (default 2000 for 2-D, 100 for images)")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--guidance", type=float, help="CFG weight for class-conditional models")
    pv.set_defaults(fn=cmd_preview)

    ck = sub.add_parser("check-solver", help="conformance: measured vs declared order, NFE "
                        "honesty, determinism, batch and shape invariance, flow models")
    ck.add_argument("name")
    ck.add_argument("--solver-opt", action="append", metavar="KEY=VALUE")
    ck.add_argument("--model", default="gmm64", choices=["gmm64", "gmm64-vp"],
                    help="analytic mixture to test on (default gmm64, EDM schedule)")
    ck.set_defaults(fn=cmd_check)

    rp = sub.add_parser("report", help="tables and plots from a run directory")
    rp.add_argument("dir")
    rp.add_argument("--format", default="md,csv,html,parquet",
                    help="comma-separated: md,csv,html,latex,parquet")
    rp.set_defaults(fn=cmd_report)
    return p


def _condition(text: str) -> tuple[str, str, float]:
    """``--recompute-if`` KEY>NUMBER (or <, =) -> (key, op, number)."""
    import re

    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>=])\s*([-+0-9.eE]+)\s*", text)
    try:
        if m:
            return m.group(1), m.group(2), float(m.group(3))
    except ValueError:
        pass
    raise UserError("--recompute-if", text, hint="KEY>NUMBER, KEY<NUMBER or KEY=NUMBER over "
                    "a numeric row field, e.g. x_rms>8")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        sys.stderr.write(f"samplerbench: error: {exc}\n")
        return 2
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a path the user gave that cannot be used as one (the checks above name most of them)
        sys.stderr.write(f"samplerbench: error: invalid path: {exc.filename!r}; "
                         f"{exc.strerror or exc}\n")
        return 2
    except OSError as exc:
        from samplerbench.bench.store import storage_error

        if not storage_error(exc):
            raise
        # a full or read-only disk: files written whole or not at all, finished rows kept
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"samplerbench: error: cannot write{where}: {exc.strerror or exc}; "
                         "free space or choose another --out (written files are whole; "
                         "a rerun of `run` resumes from rows.jsonl)\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("samplerbench: interrupted; finished cells are in rows.jsonl\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
