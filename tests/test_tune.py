"""``samplerbench tune-grid`` (bench/tune.py): the grid parametrisation, the tuned grid beating
karras on held-out seeds, the written file read back by ``--grid @FILE.json`` in ``sample`` and
``run`` with the same points and the same error, and bad input exiting 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from samplerbench.bench.cli import main
from samplerbench.bench.tune import GridParams, _refined, tune_grid
from samplerbench.models.zoo import load_model
from samplerbench.solvers.grids import make_grid


@pytest.mark.parametrize("model", ["gmm64", "gmm64-vp", "gmm64-rf"])
def test_parametrisation_round_trip_and_monotone(model):
    sched = load_model(model).schedule
    k = make_grid("karras", sched, 8)
    pts = k.t[:-1]
    p = GridParams(sched, k.t_start, k.t_end, 8)
    assert p.dim == 6
    back = p.points(p.theta(pts))
    assert torch.allclose(back, pts, rtol=1e-12, atol=0)          # karras is a point of it
    assert back[0] == pts[0] and back[-1] == pts[-1]               # ends exact
    rng = np.random.default_rng(0)
    for _ in range(20):                                           # any theta: valid grid
        t = p.points(rng.normal(scale=3.0, size=p.dim))
        assert (t[1:] < t[:-1]).all() and t[0] == k.t_start and t[-1] == k.t_end
    free = GridParams(sched, k.t_start, k.t_end, 8, fix_ends=False)
    assert free.dim == 7
    for _ in range(20):
        t = free.points(rng.normal(scale=3.0, size=free.dim))
        assert (t[1:] < t[:-1]).all() and t[0] == k.t_start and t[-1] > sched.t_min


def test_refined_grid_halves_intervals_in_log_sigma():
    sched = load_model("gmm2d").schedule               # EDM: sigma/alpha = t
    pts = torch.tensor([80.0, 5.0, 0.2, 0.002], dtype=torch.float64)
    r = _refined(pts, sched)
    assert r.numel() == 7 and torch.equal(r[0::2], pts)
    assert torch.allclose(r[1::2], (pts[:-1] * pts[1:]).sqrt(), rtol=1e-13)
    assert torch.equal(_refined(pts, sched, 0.002), r)                   # ends at t_min already
    assert _refined(pts[:-1], sched, 0.002).tolist() == r[:-2].tolist() + [0.002]   # free end


def test_tuned_beats_karras_on_held_out_and_file_round_trips(tmp_path, capsys):
    """gmm64, dpmpp_2m at 6 NFE: measured 53 % lower calibration and 47 % lower held-out error
    (0.1348 -> 0.0708, paired se 0.005) with 32 calibration seeds and 200 evaluations."""
    out = tmp_path / "tuned.json"
    assert main(["tune-grid", "gmm64", "dpmpp_2m", "--nfe", "6", "--seeds-cal", "32",
                 "--seeds-eval", "64", "--maxfev", "200", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out (64 seeds from 32)" in printed and "karras" in printed
    spec = json.loads(out.read_text())
    meta = spec["metadata"]
    assert (spec["name"], spec["space"], meta["steps"], meta["nfe"]) == ("list", "t", 6, 6)
    assert meta["seeds_calibration"] == {"first": 0, "count": 32}
    assert meta["seeds_held_out"] == {"first": 32, "count": 64}
    held = meta["errors"]["held_out"]
    assert held["tuned"] < 0.7 * held["start"]                # >= 30 % lower on held-out seeds
    assert held["diff"] < -5 * held["diff_se"]                # and well outside its noise
    assert meta["errors"]["calibration"]["tuned"] < meta["errors"]["calibration"]["start"]
    vals = spec["values"]
    assert vals[0] == 80.0 and vals[-1] == 0.002 and len(vals) == 6     # ends kept

    # sample: the same points, bit for bit
    npz = tmp_path / "x.npz"
    assert main(["sample", "gmm64", "dpmpp_2m", "--steps", "6", "--grid", f"@{out}", "--n", "2",
                 "--out", str(npz)]) == 0
    assert np.load(npz)["t"].tolist() == vals + [0.0]

    # run: the harness's err_rms on the held-out seeds is the one tune-grid reported
    run_dir = tmp_path / "run"
    assert main(["run", "--models", "gmm64", "--solvers", "dpmpp_2m", "--steps", "6", "--grid",
                 f"@{out}", "--samples", "64", "--seed", "32", "--dtype", "float64",
                 "--out", str(run_dir), "--quiet"]) == 0
    rows = [json.loads(x) for x in (run_dir / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["nfe"] == 6
    assert rows[0]["err_rms"] == pytest.approx(held["tuned"], rel=1e-9)


def test_refine_proxy_with_free_end_lowers_reference_error():
    """gmm2d, refine objective (no reference during tuning), last point free: the held-out error
    against the float64 reference drops too (measured 0.433 -> 0.183 at 150 evaluations)."""
    spec = tune_grid("gmm2d", "dpmpp_2m", steps=6, seeds_cal=64, seeds_eval=128, maxfev=150,
                     objective="refine", fix_ends=False)
    meta = spec["metadata"]
    assert meta["objective"] == "refine" and meta["fix_ends"] is False
    ref = meta["errors"]["held_out_err_rms"]
    assert ref["tuned"] < 0.75 * ref["start"] and ref["diff"] < -4 * ref["diff_se"]
    v = spec["values"]
    assert v[0] == 80.0 and v[-1] > 0.002 and all(a > b for a, b in zip(v, v[1:]))
    assert meta["optimizer"]["evaluations"] <= 150          # --maxfev is a hard cap


def test_maxfev_is_a_hard_cap():
    """scipy checks its maxfev once per iteration; the tuner stops at the budget exactly."""
    spec = tune_grid("gmm2d", "euler", steps=5, seeds_cal=8, seeds_eval=8, maxfev=13)
    opt = spec["metadata"]["optimizer"]
    assert opt["evaluations"] <= 13
    assert sum(r["evaluations"] for r in opt["rounds"]) <= 13


@pytest.mark.parametrize("argv, field", [
    (["gmm9", "euler", "--steps", "4"], "invalid model: 'gmm9'"),
    (["gmm2d", "eulr", "--steps", "4"], "invalid solver"),
    (["gmm2d", "euler", "--steps", "2"], "invalid --steps: 2"),
    (["gmm2d", "euler", "--steps", "1", "--free-ends"], "invalid --steps: 1"),
    (["gmm2d", "heun", "--nfe", "3"], "invalid --nfe: 3"),
    (["gmm2d", "euler_ancestral", "--steps", "4"], "invalid SOLVER: 'euler_ancestral'"),
    (["gmm2d", "dopri5", "--steps", "4"], "invalid SOLVER: 'dopri5'"),
    (["gmm2d", "euler", "--steps", "4", "--seeds-cal", "0"], "invalid --seeds-cal: 0"),
    (["gmm2d", "euler", "--steps", "4", "--init", "nope"], "invalid grid: 'nope'"),
    (["gmm2d", "euler", "--steps", "4", "--objective", "best"], "--objective"),
    (["gmm2d", "euler"], "--steps"),
])
def test_bad_input_exits_2(argv, field, tmp_path, capsys):
    assert _exit_code(["tune-grid", *argv, "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.json").exists()


def _exit_code(argv) -> int:
    """main's return value, or the status of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("out, hint", [("g.txt", "must end in .json"),
                                       ("afile/g.json", "is a file, not a folder")])
def test_bad_out_exits_2(out, hint, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["tune-grid", "gmm2d", "euler", "--steps", "4",
                 "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert "invalid --out" in err and hint in err


def test_metadata_key_is_not_a_grid_parameter(tmp_path):
    from samplerbench.solvers.grids import load_grid_file

    f = tmp_path / "g.json"
    f.write_text(json.dumps({"name": "list", "values": [80, 1, 0.002], "space": "t",
                             "metadata": {"model": "gmm2d"}}))
    assert load_grid_file(f"@{f}") == ("list", {"values": [80, 1, 0.002], "space": "t"})
    f.write_text(json.dumps({"name": "list", "values": [80, 1], "meta": {}}))
    with pytest.raises(Exception, match="meta"):
        load_grid_file(f"@{f}")


def test_tune_table_cell_and_markdown():
    """One cell of bench/tune_table.py: the paired difference is tuned - karras on the same
    held-out seeds, beta (which starts at t = 1 on rectified flow, karras at 80/81) is flagged and
    never bold, logsnr (same interval) is not flagged."""
    from samplerbench.bench.tune_table import markdown, table_cell

    den = load_model("gmm2d-rf")
    row = table_cell("gmm2d-rf", den, "euler", 4, ["beta", "logsnr"], 16, 32, maxfev=40)
    e = row["errors"]
    assert (row["steps"], row["nfe"], row["seeds_held_out"]) == (4, 4, {"first": 16, "count": 32})
    assert e["tuned"]["diff"] == pytest.approx(e["tuned"]["mean"] - e["karras"]["mean"],
                                               rel=1e-12)
    assert e["logsnr"]["diff_se"] > 0
    assert row["other_interval"] == ["beta"]
    assert table_cell("gmm2d-rf", den, "heun", 4, [], 16, 32, maxfev=40) is None   # N = 2
    md = markdown([row], ["beta", "logsnr"]).splitlines()
    assert len(md) == 3 and md[2].count("|") == 10 and " †" in md[2]
    assert "**" not in md[2].split("|")[8] and "†" in md[2].split("|")[8]    # beta
