"""The command line of a diffusers user (issue 13): ``--grid-opt``, ``--grid @FILE.json`` (also in
specs), ``--grid auto`` (the model's recommended grid), ``sample --x-init``, ``run --solver-opt``,
``run --error``, float32 sigmas in ``list`` grids, ``train --help``.  In-process (``main``)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from samplerbench.bench.cli import _grid_opts, _kv, main
from samplerbench.models.errors import UserError
from samplerbench.models.schedules import make_schedule
from samplerbench.models.zoo import load_model
from samplerbench.solvers import initial_noise, make_grid
from samplerbench.solvers.grids import load_grid_file, make_model_grid, resolve_grid
from samplerbench.solvers.noise import sample_seeds


def rows_of(d):
    return [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines() if line]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_key_value_options_parse_lists_numbers_and_bools():
    assert _grid_opts(["values=80,10,1,0.1", "space=ratio"]) == {"values": [80, 10, 1, 0.1],
                                                               "space": "ratio"}
    assert _grid_opts(["values=80"]) == {"values": [80]}
    assert _kv(["rho=5", "x=2.5", "flag=true", "off=False"], "--grid-opt") == {
        "rho": 5, "x": 2.5, "flag": True, "off": False}
    with pytest.raises(UserError, match="--grid-opt.*key=value"):
        _grid_opts(["rho"])


def test_sample_grid_opt_and_list_in_ratio(tmp_path, capsys):
    f = tmp_path / "k.npz"
    assert main(["sample", "gmm64", "euler", "--steps", "6", "--n", "2", "--grid", "karras",
                 "--grid-opt", "rho=5", "--out", str(f)]) == 0
    d = np.load(f)
    want = make_grid("karras", load_model("gmm64").schedule, 6, rho=5)
    np.testing.assert_array_equal(d["t"], want.t.numpy())
    assert str(d["grid"]) == "karras" and json.loads(str(d["grid_params"])) == {"rho": 5}
    f = tmp_path / "l.npz"
    assert main(["sample", "gmm64", "euler", "--steps", "4", "--n", "2", "--grid", "list",
                 "--grid-opt", "values=80,10,1,0.1", "--grid-opt", "space=ratio",
                 "--out", str(f)]) == 0
    np.testing.assert_allclose(np.load(f)["t"], [80, 10, 1, 0.1, 0], rtol=1e-12)


def test_grid_from_a_json_file(tmp_path, capsys):
    g = tmp_path / "g.json"
    g.write_text('{"name": "list", "values": [80, 10, 1, 0.1], "space": "t"}')
    assert load_grid_file(f"@{g}") == ("list", {"values": [80, 10, 1, 0.1], "space": "t"})
    f = tmp_path / "s.npz"
    assert main(["sample", "gmm64", "euler", "--steps", "4", "--n", "2", "--grid", f"@{g}",
                 "--out", str(f)]) == 0
    d = np.load(f)
    np.testing.assert_array_equal(d["t"], [80, 10, 1, 0.1, 0])
    assert str(d["grid"]) == "list" and str(d["grid_requested"]) == f"@{g}"


@pytest.mark.parametrize("body,expect", [
    (None, "file not found"),
    ("{not json", "not JSON"),
    ('["karras"]', "grid \"name\""),
    ('{"name": "nope"}', "valid choices"),
    ('{"name": "karras", "sigma": 3}', "grid parameter of 'karras'"),
    ('{"name": "karras", "rho": -1}', "grid parameter 'rho': -1"),
])
def test_bad_grid_file_exits_2_naming_the_file(tmp_path, capsys, body, expect):
    g = tmp_path / "bad.json"
    if body is not None:
        g.write_text(body)
    assert main(["sample", "gmm2d", "euler", "--steps", "4", "--grid", f"@{g}",
                 "--out", str(tmp_path / "x.npz")]) == 2
    line = one_error_line(capsys)
    assert "--grid @" in line and "bad.json" in line and expect in line, line
    assert not (tmp_path / "x.npz").exists()


def test_x_init_replaces_the_seeded_draw(tmp_path, capsys):
    den = load_model("gmm64")
    z = initial_noise(sample_seeds(7, 3), den.data_shape).numpy()
    np.save(tmp_path / "z.npy", z)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", "gmm64", "heun", "--steps", "5", "--n", "3", "--seed", "7",
                 "--dtype", "float64", "--out", str(a)]) == 0
    assert main(["sample", "gmm64", "heun", "--steps", "5", "--x-init", str(tmp_path / "z.npy"),
                 "--dtype", "float64", "--out", str(b)]) == 0
    da, db = np.load(a), np.load(b)
    sigma = float(den.schedule.sigma(make_grid("karras", den.schedule, 5).t_start))
    np.testing.assert_allclose(db["x_init"], sigma * z, rtol=1e-15)
    np.testing.assert_array_equal(da["x_init"], db["x_init"])
    np.testing.assert_array_equal(da["x"], db["x"])


@pytest.mark.parametrize("make,expect", [
    (lambda p: np.save(p, np.zeros((3, 64))), "shape [3, 64]"),
    (lambda p: np.save(p, np.full((2, 1, 8, 8), np.nan)), "non-finite"),
    (lambda p: p.write_text("z"), "not a .npy file"),
    (lambda p: None, "file not found"),
])
def test_bad_x_init_exits_2(tmp_path, capsys, make, expect):
    p = tmp_path / "z.npy"
    make(p)
    assert main(["sample", "gmm64", "euler", "--steps", "4", "--x-init", str(p),
                 "--out", str(tmp_path / "x.npz")]) == 2
    line = one_error_line(capsys)
    assert "--x-init" in line and expect in line, line


def test_x_init_length_must_match_n(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.zeros((3, 2)))
    assert main(["sample", "gmm2d", "euler", "--steps", "4", "--n", "5", "--x-init",
                 str(tmp_path / "z.npy"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "[5, 2]" in one_error_line(capsys)


def test_list_grid_accepts_float32_sigma_max_of_diffusers():
    from samplerbench.models.adapters import DiscreteVPSchedule

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    s = DiscreteVPSchedule(torch.cumprod(1 - betas, 0))
    smax = float(np.nextafter(np.float32(s.sigma_max), np.float32(np.inf)))   # float32, above
    assert smax > s.sigma_max
    g = make_grid("list", s, 3, values=[smax, 1.0, 0.1], space="ratio")
    assert g.t_start == 1.0 and g.t.tolist()[-1] == 0.0
    g = make_grid("list", s, 3, values=[s.sigma_max * (1 + 5e-7), 1.0, 0.1], space="ratio")
    assert g.t_start == 1.0
    with pytest.raises(UserError, match="at most"):
        make_grid("list", s, 3, values=[s.sigma_max * 1.001, 1.0, 0.1], space="ratio")
    edm = make_schedule("edm")
    assert make_grid("list", edm, 2, values=[80.00001, 1.0]).t_start == 80.0
    with pytest.raises(UserError, match="at most t_max"):
        make_grid("list", edm, 2, values=[80.1, 1.0])


def test_auto_resolves_to_the_recommended_grid_or_karras():
    den = load_model("gmm64-rf")
    assert resolve_grid("auto", {}, den) == ("karras", {})
    assert resolve_grid("uniform", {}, den) == ("uniform", {})
    flow = load_model("gmm64-rf")
    flow.recommended_grid = ("shift", {"shift": 3.0})
    g = make_model_grid(flow, "auto", 4)
    assert g.name == "shift" and g.params == {"shift": 3.0}
    torch.testing.assert_close(g.t, make_grid("shift", flow.schedule, 4, shift=3.0).t)
    with pytest.raises(UserError, match="'auto' takes no parameters"):
        resolve_grid("auto", {"rho": 3}, den)


def test_sample_auto_on_a_diffusers_flow_folder_uses_its_shift(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=4)
    tr.save_pretrained(tmp_path / "m" / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(
        tmp_path / "m" / "scheduler")
    (tmp_path / "m" / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", '
        '"SD3Transformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}')
    from safetensors.torch import save_file

    save_file({"encoder_hidden_states": torch.zeros(1, 3, 16),
               "pooled_projections": torch.zeros(1, 8)}, str(tmp_path / "m" / "cond.safetensors"))
    f = tmp_path / "s.npz"
    assert main(["sample", f"diffusers:{tmp_path / 'm'}", "euler", "--steps", "4", "--n", "1",
                 "--out", str(f)]) == 0
    d = np.load(f)
    assert str(d["grid"]) == "shift" and json.loads(str(d["grid_params"])) == {"shift": 3.0}
    assert str(d["grid_requested"]) == "auto" and d["t"][0] == 1.0
    u = np.linspace(1, 0, 5)[:4]
    np.testing.assert_allclose(d["t"][:1], 3 * u[:1] / (1 + 2 * u[:1]))


def test_adhoc_run_grid_opt_solver_opt_and_auto(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--models", "gmm2d", "--solvers", "euler_ancestral", "--steps", "4",
                 "--samples", "4", "--solver-opt", "eta=0.5", "--grid", "karras,auto", "--out", str(out), "--quiet"]) == 0
    rows = rows_of(out)
    assert {r["grid"] for r in rows} == {"karras"}
    assert sorted(str(r["grid_requested"]) for r in rows) == ["None", "auto"]
    assert all(r["solver_params"]["eta"] == 0.5 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["spec"]["error"] == "analytic"           # ad hoc: err_rms for analytic models
    # the "auto" cell is recognised on resume
    assert main(["run", "--models", "gmm2d", "--solvers", "euler_ancestral", "--steps", "4",
                 "--samples", "4", "--solver-opt", "eta=0.5", "--grid", "karras,auto",
                 "--out", str(out)]) == 0
    assert "2 reused, 0 computed" in capsys.readouterr().out
    out2 = tmp_path / "r2"
    assert main(["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4", "--samples",
                 "4", "--grid", "karras", "--grid-opt", "rho=3", "--error", "off",
                 "--out", str(out2), "--quiet"]) == 0
    (row,) = rows_of(out2)
    assert row["grid_params"] == {"rho": 3} and row["err_rms"] is None
    assert json.loads((out2 / "run.json").read_text())["spec"]["error"] is False


@pytest.mark.parametrize("extra,expect", [
    (["--solvers", "euler,euler_ancestral", "--solver-opt", "eta=0.5"],
     "solver parameter of 'euler': 'eta'"),
    (["--solvers", "euler", "--grid", "uniform", "--grid-opt", "rho=3"],
     "grid parameter of 'uniform': 'rho'"),
])
def test_adhoc_run_bad_options_exit_2(tmp_path, capsys, extra, expect):
    assert main(["run", "--models", "gmm2d", "--steps", "4", *extra,
                 "--out", str(tmp_path / "o")]) == 2
    assert expect in one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4", "--error", "maybe"])
    assert exc.value.code == 2 and "--error" in one_error_line(capsys)


def test_spec_grids_from_files_and_auto(tmp_path, capsys):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mine.json").write_text('{"name": "karras", "rho": 4}')
    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent("""
        models = ["gmm2d"]
        solvers = ["euler"]
        grids = ["@g/mine.json", { name = "@g/mine.json", rho = 2 }, "auto"]
        steps = [4]
        samples = 4
    """))
    out = tmp_path / "o"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    rows = rows_of(out)
    assert sorted((r["grid"], r["grid_params"].get("rho"), r["grid_requested"]) for r in rows) \
        == [("karras", 2, None), ("karras", 4, None), ("karras", 7.0, "auto")]
    spec.write_text(spec.read_text().replace("@g/mine.json", "@g/missing.json"))
    assert main(["run", str(spec), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "grids @g/missing.json" in line and "file not found" in line
    assert main(["run", str(spec), "--grid-opt", "rho=3"]) == 2
    assert "--grid-opt" in one_error_line(capsys)


def test_train_help_lists_names_with_times(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in ("digits-features", "moons-rf", "digits-cond-rf"):
        assert name in out
    assert "about 154 s" in out                          # moons-rf's card
