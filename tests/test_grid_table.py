"""bench/grid_table.py (grids against karras on the same seeds, from run rows) and
bench/tune_table.py's ``--grid-dir`` (the tuned grids written as reusable ``@FILE.json``)."""

from __future__ import annotations

import json
import math

import pytest

from samplerbench.bench.grid_table import compare, main, markdown


def _row(grid, fid, blocks, params=None, **kw):
    r = {"case_id": f"{grid}-{fid}", "model": "m", "solver": "dpmpp_2m",
         "solver_params": {"lower_order_final": True}, "noise": None, "steps": 6,
         "nfe": 6, "seed": 10000, "n_samples": 2048, "status": "ok", "grid": grid,
         "grid_params": params or {}, "fid": fid, "fid_se": 0.5, "fid_blocks": json.dumps(blocks),
         "fid_floor": 1.9, "fid_floor_sd": 1.0}
    r.update(kw)
    return r


def test_paired_difference_and_rank_groups_are_the_jackknife_ones():
    # leave-one-block-out values of 4 blocks; tuned is 2 lower everywhere but one block
    k = [10.0, 11.0, 9.0, 10.0]
    t = [8.0, 9.0, 7.0, 9.0]                        # per-block differences -2, -2, -2, -1
    far = [30.0, 31.0, 29.0, 30.0]
    rows = [_row("karras", 10.0, k, {"rho": 7.0}), _row("list", 8.0, t, {"values": [1, 2]}),
            _row("beta", 30.0, far, {"alpha": 0.6}),
            _row("karras", 99.0, k, {"rho": 7.0}, status="diverged"),       # left out
            _row("karras", 12.0, k, {"rho": 7.0}, nfe=10, steps=10),        # another key
            _row("karras", 13.0, k, {"rho": 7.0}, solver_params={"lower_order_final": False})]
    out = compare(rows, names={"list": "tuned"})
    assert [(e["grid"], e["nfe"]) for e in out] == [
        ("tuned", 6), ("karras", 6), ("beta(alpha=0.6)", 6), ("karras", 10), ("karras", 6)]
    assert out[-1]["solver"] == "dpmpp_2m(lower_order_final=False)"      # non-default: shown
    tuned, karras, beta = out[:3]
    d = [-2.0, -2.0, -2.0, -1.0]
    mean = sum(d) / 4
    se = math.sqrt(3 / 4 * sum((x - mean) ** 2 for x in d))       # delete-one-block jackknife
    assert tuned["diff"] == -2.0 and tuned["diff_se"] == pytest.approx(se, rel=1e-12)
    assert karras["diff"] is None and karras["group"] == 1
    assert tuned["group"] == 1 and tuned["p"] > 0.05       # t = -2.7 at 3 df: not separated
    assert beta["group"] > karras["group"]           # 20 above with se ~0: its own group
    assert beta["diff"] == 20.0 and beta["p"] < 1e-3
    md = markdown(out)
    assert "Floor (fid of 2048 real samples against the reference, mean ± sd): 1.9 ± 1." in md
    assert "| dpmpp_2m | 6 | tuned | 8.00 ± 0.50 | -2.00 ± 0.75 |" in md     # se = 0.75


def test_cli_writes_the_table_and_rejects_a_missing_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row("karras", 10.0, [10.0, 11.0, 9.0, 10.0]),
            _row("logsnr", 11.0, [11.0, 12.0, 10.0, 11.5]),
            _row("beta", None, None, status="diverged", message="blew up")]
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.md"
    assert main([str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| dpmpp_2m | 6 | logsnr | 11.00 ± 0.50 | +1.00 ± " in text
    assert "- m dpmpp_2m 6 NFE, grid beta: diverged (blew up)" in text
    assert main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
    assert main([str(run), "--out", str(out), "--name", "list"]) == 2
    assert main([str(run), "--out", str(out), "--metric", "kid"]) == 2


def test_tune_table_writes_reusable_grid_files(tmp_path):
    from samplerbench.bench.tune_table import main as table_main
    from samplerbench.models.zoo import load_model
    from samplerbench.solvers.grids import load_grid_file, make_grid

    gdir = tmp_path / "g"
    assert table_main(["--out", str(tmp_path / "t.md"), "--rows", str(tmp_path / "r.jsonl"),
                       "--grid-dir", str(gdir), "--models", "gmm2d", "--solvers", "euler",
                       "--nfe", "4", "--grids", "logsnr", "--seeds-cal", "8", "--seeds-eval",
                       "16", "--maxfev", "30"]) == 0
    row = json.loads((tmp_path / "r.jsonl").read_text())
    assert "spec" not in row
    name, params = load_grid_file(f"@{gdir / 'gmm2d_euler_nfe4.json'}")
    assert name == "list" and params["values"] == row["tuned_values"]
    grid = make_grid(name, load_model("gmm2d").schedule, 4, **params)
    assert grid.t[:-1].tolist() == row["tuned_values"] and grid.t[-1] == 0.0
    meta = json.loads((gdir / "gmm2d_euler_nfe4.json").read_text())["metadata"]
    assert meta["seeds_held_out"] == row["seeds_held_out"] == {"first": 8, "count": 16}


def test_tune_table_paired_counts_and_rebuild_from_rows(tmp_path):
    from samplerbench.bench.tune_table import main as table_main
    from samplerbench.bench.tune_table import paired_counts

    def cell(tuned, beta, other=()):
        k = {"mean": 1.0, "se": 0.1}
        return {"model": "gmm2d", "solver": "euler", "nfe": 6, "steps": 6, "cell_s": 2.5,
                "seeds_held_out": {"first": 8, "count": 16},
                "seeds_calibration": {"first": 0, "count": 8}, "other_interval": list(other),
                "errors": {"karras": k,
                           "tuned": {"mean": 1 + tuned[0], "se": 0.1, "diff": tuned[0],
                                     "diff_se": 0.1, "p": tuned[1]},
                           "beta": {"mean": 1 + beta[0], "se": 0.1, "diff": beta[0],
                                    "diff_se": 0.1, "p": beta[1]}}}

    rows = [cell((-0.5, 0.001), (0.3, 0.01)), cell((-0.2, 0.2), (0.1, 0.04)),
            cell((-0.4, 0.01), (-0.9, 0.001), other=["beta"])]
    table = paired_counts(rows, ["beta"]).splitlines()
    assert table[2] == "| tuned | 2 | 1 | 0 | 0 | -40% |"      # median of -50, -20, -40 %
    assert table[3] == "| beta | 0 | 0 | 2 | 1 | +30% |"        # the other start not counted
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.md"
    assert table_main(["--out", str(out), "--from-rows", str(f), "--grids", "beta"]) == 0
    md = out.read_text()
    assert "16 seeds after 8 calibration seeds" in md and "3 cells, 8 s." in md
    assert ("| gmm2d | euler | 6 | 6 | 1.000e+00 ± 1.0e-01 | **5.000e-01 ± 1.0e-01** | "
            "-50.0% ± 10.0%") in md
    assert table[3] in md
    assert table_main(["--out", str(out), "--from-rows", str(tmp_path / "none.jsonl")]) == 2


def test_report_file_names_of_long_grid_labels_stay_short():
    from samplerbench.bench.report import _slug

    assert _slug("ays{\"model\": \"svd\"}") == "ays__model____svd__"            # short: as before
    a = _slug("list" + json.dumps({"values": [0.1 * i for i in range(10)]}))
    b = _slug("list" + json.dumps({"values": [0.1 * i for i in range(11)]}))
    assert len(a) == 71 and a != b and a[:60] == b[:60]           # cut + hash of the whole


def test_tune_check_fine_solve_matches_the_float64_reference(tmp_path):
    """On gmm2d the fine dpmpp_2m solve stands in for the dopri8 reference: the start and tuned
    grids' errors against it are tune-grid's held-out err_rms (same seeds) to < 1 %."""
    from samplerbench.bench.tune import tune_grid
    from samplerbench.bench.tune_check import check

    spec = tune_grid("gmm2d", "euler", steps=4, seeds_cal=8, seeds_eval=16, maxfev=30)
    f = tmp_path / "t.json"
    f.write_text(json.dumps(spec))
    r = check(str(f), fine_steps=200)
    held = spec["metadata"]["errors"]["held_out"]
    assert r["seeds"] == {"first": 8, "count": 16}
    assert r["start"] == pytest.approx(held["start"], rel=1e-2)
    assert r["tuned"] == pytest.approx(held["tuned"], rel=1e-2)
    assert r["diff"] == pytest.approx(r["tuned"] - r["start"], rel=1e-12) and r["diff"] < 0
    assert r["fine_err"] < 1e-2 * r["tuned"]
