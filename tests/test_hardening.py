"""Hardening (issue 15): a damaged store never blocks a resume or a report; the weights a
diffusers folder loads are the ones checked; bad paths, files and values exit 2 with one line
that names them; files the CLI writes appear whole or not at all."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from samplerbench.bench.cli import main
from samplerbench.bench.store import (RowStore, atomic_write_bytes, atomic_write_text,
                                      check_out_file, read_rows, row_matches_cell)
from samplerbench.models.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
GMM = {"weights": [0.5, 0.5], "means": [[-1.0, 0.0], [1.0, 0.0]], "stds": [0.3, 0.5]}
TINY = ["--models", "gmm2d", "--solvers", "euler", "--steps", "2", "--samples", "4", "--quiet"]
SPEC = 'models = ["gmm2d"]\nsolvers = ["euler"]\nsteps = [2]\nsamples = 4\n'


def exits_2(capsys, args, *needles) -> str:
    """``main(args)`` exits 2 with one stderr line that holds every needle."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:            # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def run_tiny(out: Path, *extra) -> int:
    return main(["run", *TINY, *extra, "--out", str(out)])


# ------------------------------------------------------------------------------------------------
# 1. rows never block a resume or a report
# ------------------------------------------------------------------------------------------------

JUNK = [b"42", b"[1, 2]", b'"a string"', b"{}", b"\xff\xfe not utf-8", b'{"case_id": "x"}',
        b'{"case_id": 1, "model": "m", "solver": "s", "grid": "g", "status": "ok"}', b"{not json"]


def test_read_rows_skips_what_is_not_a_row_with_one_counting_warning(tmp_path, capsys):
    good = {"case_id": "abc", "model": "gmm2d", "solver": "euler", "grid": "karras",
            "status": "ok"}
    f = tmp_path / "rows.jsonl"
    f.write_bytes(b"\n".join([json.dumps(good).encode(), *JUNK, json.dumps(good).encode()])
                  + b'\n{"case_id": "torn')
    assert read_rows(f) == [good, good]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"skipped {len(JUNK)} lines" in err[0], err    # torn tail: silent
    assert "not UTF-8" in err[0] and "not a JSON object" in err[0]
    read_rows(f)                                        # read again: no second warning
    assert capsys.readouterr().err == ""


def test_damaged_store_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "o"
    assert run_tiny(out) == 0
    with open(out / "rows.jsonl", "ab") as fh:
        fh.write(b"\n".join(JUNK) + b"\n")
    capsys.readouterr()
    assert run_tiny(out) == 0
    captured = capsys.readouterr()
    assert "1 reused, 0 computed" in captured.out
    assert main(["report", str(out), "--format", "csv"]) == 0
    assert (out / "report" / "rows.csv").is_file()


def _cells(spec_text: str, tmp_path: Path):
    from samplerbench.bench.runner import expand_cells
    from samplerbench.bench.spec import load_spec

    f = tmp_path / "m.toml"
    f.write_text(spec_text)
    return load_spec(f), expand_cells(load_spec(f), "cpu")


def test_foreign_rows_do_not_count_as_done(tmp_path):
    spec_text = textwrap.dedent("""
        models = ["gmm2d"]
        solvers = ["euler", {name = "euler_ancestral", eta = 0.5}, "dopri5"]
        grids = ["karras", {name = "uniform", t_min = 0.01}]
        steps = [2]
        tolerances = [1e-3]
        samples = 4
        noise = ["fresh"]
        [metrics]
        nonconv = false
        weak = false
        """)
    spec, cells = _cells(spec_text, tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "m.toml"), "--out", str(out), "--quiet"]) == 0
    store = RowStore(out)
    ids = {c.case_id for c in cells}
    assert store.done_ids(cells=cells) == ids == store.done_ids()
    rows = read_rows(store.path)
    by_id = {c.case_id: c for c in cells}
    assert all(row_matches_cell(r, by_id[r["case_id"]].config()) for r in rows)
    # a row that claims a cell of the matrix with another cell's fields is foreign
    victim = next(r for r in rows if r["solver"] == "euler_ancestral")
    forged = [dict(victim, steps=64), dict(victim, model="gmm64"),
              dict(victim, solver_params={**victim["solver_params"], "eta": 1.0}),
              dict(victim, device="cuda:0")]
    for row in forged:
        lines = [json.dumps(r) for r in rows if r is not victim] + [json.dumps(row)]
        store.path.write_text("\n".join(lines) + "\n")
        assert store.done_ids(cells=cells) == ids - {victim["case_id"]}, row
    # an older row without the fields added later (state_dtype, compile) still matches
    old = {k: v for k, v in victim.items() if k not in ("state_dtype", "compile")}
    assert row_matches_cell(old, by_id[victim["case_id"]].config())


# ------------------------------------------------------------------------------------------------
# 2. the weights diffusers loads are the weights checked
# ------------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_folder_weights_check_looks_at_the_loaded_file(tmp_path):
    from safetensors.torch import save_file

    from samplerbench.models.adapters import _check_folder_weights

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"w": torch.ones(1)}, str(bad / "junk.safetensors"))     # not what is loaded
    torch.save({"w": _Evil(marker)}, bad / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="refusing to unpickle"):
        _check_folder_weights(bad)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    torch.save({"w": torch.ones(1)}, sharded / "part-1.bin")
    torch.save({"v": _Evil(marker)}, sharded / "part-2.bin")
    (sharded / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"w": "part-1.bin", "v": "part-2.bin"}}))
    with pytest.raises(UserError, match="refusing to unpickle"):
        _check_folder_weights(sharded)
    assert not marker.exists()
    only_junk = tmp_path / "only_junk"
    only_junk.mkdir()
    save_file({"w": torch.ones(1)}, str(only_junk / "junk.safetensors"))
    with pytest.raises(UserError, match="diffusion_pytorch_model.safetensors"):
        _check_folder_weights(only_junk)
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save({"w": torch.ones(1)}, plain / "diffusion_pytorch_model.bin")
    assert _check_folder_weights(plain) is False            # plain tensors: loaded as .bin
    save_file({"w": torch.ones(1)}, str(plain / "diffusion_pytorch_model.safetensors"))
    assert _check_folder_weights(plain) is True             # diffusers prefers safetensors


def test_diffusers_folder_with_junk_safetensors_and_evil_bin_is_refused(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    folder = tmp_path / "unet"
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=100).save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "junk.safetensors")
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": _Evil(marker)}, folder / "diffusion_pytorch_model.bin")
    assert main(["sample", f"diffusers:{folder}", "ddim", "--steps", "2", "--n", "1",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert not marker.exists() and not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------------------------------------
# 3. exit 2, one line, for bad paths, files and values
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "devnull", "under_file", "under_devnull"])
def test_out_that_cannot_be_a_directory(where, tmp_path, capsys):
    f = tmp_path / "f.txt"
    f.write_text("keep")
    out = {"file": f, "devnull": Path("/dev/null"), "under_file": f / "sub",
           "under_devnull": Path("/dev/null/sub")}[where]
    exits_2(capsys, ["run", *TINY, "--out", out], "--out", str(out))
    assert f.read_text() == "keep"


def test_out_read_only_directory(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the path-under-a-file cases cover "
                    "an unwritable --out")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        exits_2(capsys, ["run", *TINY, "--out", ro / "o"], "--out")
        exits_2(capsys, ["sample", "gmm2d", "euler", "--steps", "2", "--out", ro / "x.npz"],
                "--out")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("name", ["rows.jsonl", "run.json", ".lock"])
def test_store_file_that_is_a_directory(name, tmp_path, capsys):
    out = tmp_path / "o"
    (out / name).mkdir(parents=True)
    exits_2(capsys, ["run", *TINY, "--out", out], name)
    if name == "rows.jsonl":
        exits_2(capsys, ["report", out], name)


def test_report_dir_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "o"
    assert run_tiny(out) == 0
    (out / "report").write_text("not a folder")
    capsys.readouterr()
    exits_2(capsys, ["report", out, "--format", "csv"], "report")
    exits_2(capsys, ["report", out / "rows.jsonl"], "report DIR")


def test_files_that_are_not_utf8(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_bytes(SPEC.encode() + b'description = "\xff\xfe"\n')
    exits_2(capsys, ["run", spec, "--out", tmp_path / "o"], "s.toml", "UTF-8")
    gmm = tmp_path / "m.json"
    gmm.write_bytes(json.dumps(GMM).encode()[:-1] + b', "schedule": "\xe9dm"}')
    exits_2(capsys, ["sample", f"gmm:{gmm}", "euler", "--steps", "2", "--out",
                     tmp_path / "x.npz"], "m.json", "UTF-8")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(b'{"_class_name": "UNet2DModel\xff"}')
    (folder / "scheduler_config.json").write_text('{"_class_name": "DDPMScheduler"}')
    exits_2(capsys, ["sample", f"diffusers:{folder}", "ddim", "--steps", "2", "--out",
                     tmp_path / "x.npz"], "config.json", "UTF-8")
    index = tmp_path / "pipe"
    index.mkdir()
    (index / "model_index.json").write_bytes(b"\xff{}")
    exits_2(capsys, ["sample", f"diffusers:{index}", "ddim", "--steps", "2", "--out",
                     tmp_path / "x.npz"], "model_index.json")
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("body,needles", [
    ('grids = [{name = "karras", t_min = "abc"}]', ["t_min", "abc"]),
    ('grids = [{name = "uniform", t_min = -0.5}]', ["t_min", "-0.5"]),
    ('grids = [{name = "logsnr", t_min = 1e9}]', ["t_min"]),
    ('grids = [{name = "karras", t_min = nan}]', ["t_min", "nan"]),
    ('grids = [{name = "karras", rho = inf}]', ["rho", "inf"]),
    ('grids = [{name = "shift", shift = "3"}]', ["shift"]),
    ("threads = 100000", ["threads", "100000", "CPUs"]),
    ('name = ".."', ["name", "'..'"]),
    ('name = "."', ["name"]),
    ('name = "a\\u0000b"', ["name"]),
    ('name = "a\\\\b"', ["name"]),
    ('name = " "', ["name"]),
    ("steps = [1000000000]", ["steps", "1000000"]),
    ('solvers = [{name = "euler_ancestral", eta = nan}]', ["eta", "nan", "finite"]),
    ('solvers = [{name = "euler_ancestral", s_noise = inf}]', ["s_noise", "finite"]),
    ('solvers = [{name = "ddim_eta", eta = "half"}]', ["eta", "half", "a number"]),
    ('solvers = [{name = "edm_stochastic", S_churn = "x"}]', ["S_churn", "a number"]),
    ('solvers = [{name = "ipndm", solver_order = 2.5}]', ["solver_order", "integer"]),
    ('solvers = [{name = "dpmpp_2m", lower_order_final = 1}]', ["lower_order_final"]),
    ('solvers = [{name = "ddpm", variance = 3}]', ["variance"]),
])
def test_bad_spec_values(body, needles, tmp_path, capsys):
    lines = {line.split("=")[0].strip(): line for line in SPEC.splitlines()}
    key = body.split("=")[0].strip()
    lines[key] = body
    spec = tmp_path / "s.toml"
    spec.write_text("\n".join(lines.values()) + "\n")
    exits_2(capsys, ["run", spec, "--out", tmp_path / "o"], *needles)
    assert not (tmp_path / "o").exists()


def test_edm_s_max_may_be_infinite():
    from samplerbench.solvers import get_solver

    assert get_solver("edm_stochastic", S_max=float("inf")).S_max == float("inf")
    with pytest.raises(UserError, match="S_min"):
        get_solver("edm_stochastic", S_min=float("inf"))


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_adhoc_run_name(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exits_2(capsys, ["run", *TINY, "--name", name], "name")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change,needles", [
    ({"schedule": "edm", "schedule_params": [1, 2]}, ["schedule_params", "[1, 2]"]),
    ({"schedule": "edm", "schedule_params": "sigma"}, ["schedule_params"]),
    ({"schedule": "edm", "schedule_params": {"t_max": "x"}}, ["t_max", "'x'"]),
    ({"schedule": "vp-linear", "schedule_params": {"beta_max": True}}, ["beta_max"]),
    ({"schedule": "vp-linear", "schedule_params": {"beta_max": -5}}, ["vp-linear"]),
    ({"schedule": "edm", "t_min": 90}, ["edm", "t_min"]),
    ({"schedule": "rf", "t_min": 1}, ["t_min", "rf", "(0, 1)"]),
    ({"schedule": "rf", "t_min": 1.5}, ["t_min"]),
    ({"schedule": "trig", "t_min": 1.0}, ["t_min", "trig"]),
    ({"schedule": "rf", "t_min": 0.999999}, ["rf", "sigma"]),
    ({"means": [[float("nan"), 0.0], [1.0, 0.0]]}, ["means", "nan"]),
    ({"means": [[float("inf"), 0.0], [1.0, 0.0]]}, ["means", "inf"]),
    ({"stds": [float("nan"), 0.5]}, ["stds"]),
    ({"stds": [float("inf"), 0.5]}, ["stds"]),
    ({"stds": ["a", 0.5]}, ["stds"]),
    ({"stds": None, "covs": [[[float("nan"), 0], [0, 1]], [[1, 0], [0, 1]]]}, ["covs", "nan"]),
    ({"stds": None, "covs": [[[1, 0], [0, float("inf")]], [[1, 0], [0, 1]]]}, ["covs", "inf"]),
])
def test_bad_gmm_values(change, needles, tmp_path, capsys):
    doc = {k: v for k, v in {**GMM, **change}.items() if v is not None}
    f = tmp_path / "m.json"
    f.write_text(json.dumps(doc))                  # NaN / Infinity as Python's json writes them
    exits_2(capsys, ["sample", f"gmm:{f}", "euler", "--steps", "2", "--out", tmp_path / "x.npz"],
            *needles)
    exits_2(capsys, ["run", "--models", f"gmm:{f}", "--solvers", "euler", "--steps", "2",
                     "--out", tmp_path / "o"], *needles)
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "o").exists()


USER_MODULE = """
import torch

class Net(torch.nn.Module):
    def forward(self, x, sigma):
        return x / (1 + sigma[:, None] ** 2)

def make():
    return Net()
"""


@pytest.fixture()
def user_module(tmp_path):
    f = tmp_path / "mynet.py"
    f.write_text(USER_MODULE)
    return f


@pytest.mark.parametrize("prefix", ["edm", "flow"])
@pytest.mark.parametrize("shape", ["0", "-1", "2,0", "0,-3"])
def test_model_spec_shape_must_be_positive(prefix, shape, user_module, tmp_path, capsys):
    exits_2(capsys, ["sample", f"{prefix}:{user_module}:make?shape={shape}", "euler", "--steps",
                     "2", "--out", tmp_path / "x.npz"], "shape", shape)


@pytest.mark.parametrize("query", ["sigma_max=abc", "sigma_min=x&shape=2", "sigma_max=nan"])
def test_edm_sigma_options_must_be_numbers(query, user_module, tmp_path, capsys):
    exits_2(capsys, ["sample", f"edm:{user_module}:make?{query}", "euler", "--steps", "2",
                     "--out", tmp_path / "x.npz"], "sigma")


@pytest.mark.parametrize("source,needles", [
    ("raise RuntimeError('no GPU here')", ["RuntimeError", "no GPU here"]),
    ("def broken(:\n    pass", ["SyntaxError"]),
    ("import sys\nsys.exit(0)", ["sys.exit(0)"]),
    ("import sys\nsys.exit('bye')", ["sys.exit('bye')"]),
    ("import no_such_module_xyz", ["no_such_module_xyz"]),
    ("def make():\n    raise ValueError('bad weights')", ["building", "bad weights"]),
])
def test_user_module_that_fails(source, needles, tmp_path, capsys):
    f = tmp_path / "bad_net.py"
    f.write_text(source + "\n")
    exits_2(capsys, ["sample", f"edm:{f}:make?shape=2", "euler", "--steps", "2", "--out",
                     tmp_path / "x.npz"], "bad_net.py", *needles)
    exits_2(capsys, ["run", "--models", f"flow:{f}:make?shape=2", "--solvers", "euler",
                     "--steps", "2", "--out", tmp_path / "o"], "bad_net.py", *needles)


def test_user_module_exiting_0_does_not_end_run_with_0(tmp_path):
    f = tmp_path / "quitter.py"
    f.write_text("import sys\nsys.exit(0)\n")
    r = subprocess.run([sys.executable, "-m", "samplerbench", "run", "--models",
                        f"edm:{f}:make?shape=2", "--solvers", "euler", "--steps", "2",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "quitter.py" in r.stderr and "sys.exit(0)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("opt,needles", [
    ("eta=nan", ["eta", "nan", "finite"]),
    ("eta=-inf", ["eta", "finite"]),
    ("s_noise=NaN", ["s_noise", "finite"]),
    ("eta=abc", ["eta", "'abc'", "a number"]),
    ("eta=[1]", ["eta", "a number"]),
    ("eta=true", ["eta", "a number"]),
])
def test_solver_opt_values(opt, needles, tmp_path, capsys):
    exits_2(capsys, ["sample", "gmm2d", "euler_ancestral", "--steps", "2", "--solver-opt", opt,
                     "--out", tmp_path / "x.npz"], *needles)


@pytest.mark.parametrize("solver,opt,needle", [
    ("edm_stochastic", "S_churn=abc", "S_churn"),
    ("ipndm", "solver_order=two", "solver_order"),
    ("dpmpp_2m", "lower_order_final=2", "lower_order_final"),
    ("dpmpp_sde", "r=nan", "'r'"),
])
def test_solver_opt_types_name_the_option(solver, opt, needle, tmp_path, capsys):
    line = exits_2(capsys, ["sample", "gmm2d", solver, "--steps", "2", "--solver-opt", opt,
                            "--out", tmp_path / "x.npz"], needle)
    assert "not supported" not in line


@pytest.mark.parametrize("steps,needle", [("1e9", "1000000"), ("1000000000", "1000000"),
                                          ("1000001", "1000000"), ("-3", "steps"),
                                          ("2.5", "--steps"), ("lots", "--steps")])
def test_sample_steps_bounded(steps, needle, tmp_path, capsys):
    exits_2(capsys, ["sample", "gmm2d", "euler", "--steps", steps, "--out", tmp_path / "x.npz"],
            needle)


def test_run_steps_bounded(tmp_path, capsys):
    exits_2(capsys, ["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "2,1000000000",
                     "--out", tmp_path / "o"], "steps", "1000000")


# ------------------------------------------------------------------------------------------------
# 4. files the CLI writes appear whole or not at all
# ------------------------------------------------------------------------------------------------

def test_atomic_writes_replace_whole_or_keep_the_old_file(tmp_path):
    f = tmp_path / "a.txt"
    atomic_write_text(f, "first")
    atomic_write_bytes(f, b"second")
    assert f.read_bytes() == b"second"
    assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    from samplerbench.bench.store import atomic_open

    with pytest.raises(RuntimeError):
        with atomic_open(f, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert f.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]      # no temporary left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sample_writes_atomically(tmp_path, monkeypatch):
    import numpy as np

    out = tmp_path / "x.npz"
    assert main(["sample", "gmm2d", "euler", "--steps", "2", "--n", "3", "--out", str(out)]) == 0
    before = out.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        main(["sample", "gmm2d", "euler", "--steps", "4", "--n", "3", "--out", str(out)])
    assert out.read_bytes() == before and np.load(out)["x"].shape == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


@pytest.mark.parametrize("bad", ["under_file", "is_dir"])
def test_sample_checks_out_before_solving(bad, tmp_path, capsys, monkeypatch):
    import samplerbench.bench.sample as sample

    def never(*a, **k):
        raise AssertionError("solved before checking --out")

    monkeypatch.setattr(sample, "draw", never)
    f = tmp_path / "f"
    f.write_text("")
    out = f / "x.npz" if bad == "under_file" else tmp_path / "d.npz"
    if bad == "is_dir":
        out.mkdir()
    exits_2(capsys, ["sample", "gmm2d", "euler", "--steps", "2", "--out", out], "--out")
    with pytest.raises(UserError):
        check_out_file(out)


def test_list_grid_in_a_spec_runs_with_nonconv_null_and_a_message(tmp_path):
    """A 'list' grid has no 2N-step version: the cell runs, nonconv is null and says why
    (issue 15: the run used to exit 2 mid-matrix, after writing run.json, with no row)."""
    from samplerbench.bench.runner import rows, run_spec
    from samplerbench.bench.spec import parse_spec

    spec = parse_spec({"name": "lg", "models": ["gmm64", "gmm64-rf"], "solvers": ["euler", "heun"],
                       "grids": [{"name": "list", "values": [80.0, 10.0, 1.0, 0.1],
                                  "space": "ratio"}],
                       "steps": [4], "samples": 8, "dtype": "float64"})
    run_spec(spec, tmp_path, progress=False)
    got = rows(tmp_path)
    assert len(got) == 4 and all(r["status"] == "ok" for r in got)
    for r in got:
        assert r["nonconv"] is None and "nonconv not computed" in r["message"]
        assert r["err_rms"] is not None and r["grid"] == "list"
