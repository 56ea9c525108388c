"""Publication formats of `samplerbench report` (issue 6): rows.parquet round-trips rows.jsonl;
KID rows from a digits run and the KID table of the report."""

from __future__ import annotations

import json
import math
import textwrap

import pandas as pd

from samplerbench.bench.cli import main


def _rows(d):
    return [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines() if line]


def _same(a, b) -> bool:
    none_a = a is None or (isinstance(a, float) and math.isnan(a))
    none_b = b is None or (isinstance(b, float) and math.isnan(b))
    if none_a or none_b:
        return none_a and none_b
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def test_parquet_round_trips_rows_jsonl(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", "gmm64", "--solvers", "euler,heun,euler_ancestral",
                 "--steps", "4,8", "--samples", "8", "--dtype", "float64", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["report", str(out)]) == 0                   # parquet is a default format
    path = out / "report" / "rows.parquet"
    assert path.stat().st_size > 1000
    back = pd.read_parquet(path)
    rows = _rows(out)
    assert len(back) == len(rows) == 6
    assert list(back.columns) == list(rows[0].keys())        # every key, in the row order
    by_id = {r["case_id"]: r for r in rows}
    assert set(back["case_id"]) == set(by_id)
    checked = 0
    for rec in back.to_dict("records"):
        row = by_id[rec["case_id"]]
        for k, v in row.items():
            got = rec[k]
            if k in ("solver_params", "grid_params") or isinstance(v, list):
                got = json.loads(got)                          # nested: JSON text, as in CSV
            assert _same(v, got), (k, v, got)
            checked += 1
    assert checked == 6 * len(rows[0])
    assert back["err_rms"].notna().sum() == 4 and back["nfe"].dtype.kind in "iu"


def test_report_format_list_validated(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", "gmm2d", "--solvers", "euler", "--steps", "4",
                 "--samples", "4", "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out), "--format", "md,feather"]) == 2
    assert main(["report", str(out), "--format", "md"]) == 0
    assert not (out / "report" / "rows.parquet").exists()
    assert main(["report", str(out), "--format", "parquet"]) == 0
    assert len(pd.read_parquet(out / "report" / "rows.parquet")) == 1


def test_kid_rows_and_report_table(tmp_path):
    spec = tmp_path / "kid.toml"
    spec.write_text(textwrap.dedent("""
        models = ["digits-rf", "gmm2d"]
        solvers = ["euler"]
        steps = [2, 4]
        samples = 128
        threads = 1
        [metrics]
        error = false
        nonconv = false
        kid = true
        [timing]
        repeats = 1
        warmup = 0
    """))
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    rows = _rows(out)
    digits = {r["steps"]: r for r in rows if r["model"] == "digits-rf"}
    assert set(digits) == {2, 4}
    for r in digits.values():
        assert r["kid"] is not None and r["kid_se"] > 0 and len(r["kid_blocks"]) == 8
        assert r["kid_protocol"] == r["fid_features"] + r["kid_protocol"][len(r["fid_features"]):]
        assert r["kid_protocol"].endswith(",unbiased-mmd2-all-samples")
        assert r["kid_floor"] is not None and r["kid_floor_sd"] > 0
    assert digits[4]["kid"] < digits[2]["kid"]               # measured 0.27 vs 0.72
    for r in rows:
        if r["model"] == "gmm2d":                            # KID is for digits models only
            assert r.get("kid") is None and r.get("kid_protocol") is None and r["fid"] is not None
    assert main(["report", str(out), "--format", "md,html,latex"]) == 0
    md = (out / "report" / "README.md").read_text()
    section = md.split("## digits-rf")[1].split("\n## ")[0]
    assert "### KID — features: " + digits[2]["kid_protocol"] in section
    from samplerbench.bench.report import _num

    kid2 = f"{_num(digits[2]['kid'], digits[2]['kid_se'])} (2)"
    assert f"| euler | {kid2} | " in section
    assert "Floor (KID of exact samples" in section
    assert "KID" not in md.split("## gmm2d")[1]
    assert "KID" in (out / "report" / "report.html").read_text()
    assert r"$\pm$" in (out / "report" / "tables.tex").read_text()


def test_kid_needs_weak_metrics(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('models = ["digits-rf"]\nsolvers = ["euler"]\nsteps = [2]\n'
                    '[metrics]\nweak = false\nkid = true\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    spec.write_text('models = ["digits-rf"]\nsolvers = ["euler"]\nsteps = [2]\n'
                    '[metrics]\nkid = "yes"\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert not (tmp_path / "o").exists()


def test_headline_table_groups_equal_budget_cells_by_paired_tests():
    """Budget cells only; FID ± se (NFE) and the rank group of the paired test; identical
    samples (equal fingerprints) are one row "a = b"; a budget whose cell repeats the previous
    budget's (same steps) says "="; diverged cells, data-space features and memorising models
    are left out."""
    import pandas as pd

    from samplerbench.bench.report import headline_table

    def row(solver, budget, steps, nfe, blocks, model="digits-vp", status="ok", fp=None,
            feats="digits-features@x", distinct=None):
        fid = sum(blocks) / len(blocks)
        return {"model": model, "label": solver, "solver": solver, "nfe_budget": budget,
                "steps": steps, "nfe": nfe, "fid": fid, "fid_blocks": blocks, "fid_se": 0.1,
                "status": status, "fid_features": feats, "x_fingerprint": fp or [fid, steps],
                "x_rms": 1.0, "state_dtype": "float32", "fid_floor": 1.9, "fid_floor_sd": 1.0,
                "train_distinct": distinct}

    near = [5.0, 5.2, 4.9, 5.1]
    df = pd.DataFrame([
        row("dpmpp_2m", 8, 8, 8, near), row("unipc_bh2", 8, 8, 8, [5.1, 5.2, 5.0, 5.2]),
        row("euler", 8, 8, 8, [9.0, 9.4, 8.8, 9.1]),
        row("ddim", 8, 8, 8, [9.0, 9.4, 8.8, 9.1], fp=[9.075, 8]),        # = euler's samples
        row("heun", 8, 4, 7, [7.0, 7.3, 6.8, 7.2]), row("heun", 9, 4, 7, [7.0, 7.3, 6.8, 7.2]),
        row("dpmpp_2m", 9, 9, 9, near), row("euler", 9, 9, 9, [8.0, 8.2, 7.9, 8.1]),
        row("rk4", 8, 2, 5, [1.0, 1.0, 1.0, 1.0], status="diverged"),
        row("euler", 8, 8, 8, near, feats="data:exact-moments", model="gmm64"),
        row("euler", 8, 8, 8, near, model="digits-ideal", distinct=100),
    ])
    df.loc[df["label"] == "euler", "x_fingerprint"] = df.loc[df["label"] == "euler"].apply(
        lambda r: [r["fid"], r["steps"]], axis=1)
    t, floors = headline_table(df, "digits-vp")
    assert list(t.columns) == ["≤ 8 NFE", "≤ 9 NFE"]
    assert floors == {8: (1.9, 1.0), 9: (1.9, 1.0)}
    assert set(t.index) == {"dpmpp_2m", "unipc_bh2", "ddim = euler", "heun"}
    col = t["≤ 8 NFE"]
    assert col["dpmpp_2m"].endswith("(8) g1") and col["unipc_bh2"].endswith("(8) g1")
    assert col["heun"].endswith("(7) g2") and col["ddim = euler"].endswith("(8) g3")
    assert t.loc["heun", "≤ 9 NFE"].endswith("(7) g2 =")           # the same cell as at 8
    assert t.loc["unipc_bh2", "≤ 9 NFE"] == "—"
    assert headline_table(df, "gmm64")[0].empty and headline_table(df, "digits-ideal")[0].empty


def test_report_reads_the_latest_row_of_each_cell(tmp_path):
    """rows.jsonl is append-only: a cell computed again (a newer version whose case_id scheme
    differs, or a larger max_nfe) has several rows; the report uses the last of each cell and
    says how many it superseded."""
    out = tmp_path / "run"
    assert main(["run", "--models", "gmm64", "--solvers", "euler,heun", "--steps", "4,8",
                 "--samples", "8", "--dtype", "float64", "--out", str(out), "--quiet"]) == 0
    rows = _rows(out)
    stale = dict(rows[0], case_id="0000000000000000", err_rms=123.0, git_sha="old")
    lines = (out / "rows.jsonl").read_text()
    # the stale row first (written by an older version), the current rows after it
    (out / "rows.jsonl").write_text(json.dumps(stale) + "\n" + lines)
    assert main(["report", str(out), "--format", "csv,md"]) == 0
    csv = pd.read_csv(out / "report" / "rows.csv")
    assert len(csv) == 4 and 123.0 not in set(csv["err_rms"])
    assert "1 older rows of the same cells in rows.jsonl superseded" in (
        out / "report" / "README.md").read_text()


def test_latent_pixel_table_compares_group_one_and_rank_correlation():
    """Latent vs pixel (issue 14): each latent model is paired with its pixel twin
    (``digits-latent-rf`` -> ``digits-rf``); per budget, the group-1 sets, whether each best
    solver is in the other model's group 1, and Spearman's rho with a jackknife se over the
    delete-one-block values."""
    import pandas as pd
    from scipy import stats as sps

    from samplerbench.bench.report import latent_pixel_table, pixel_twin

    def row(model, solver, blocks, budget=8):
        fid = sum(blocks) / len(blocks)
        return {"model": model, "label": solver, "solver": solver, "nfe_budget": budget,
                "steps": budget, "nfe": budget, "fid": fid, "fid_blocks": blocks,
                "fid_se": 0.1, "status": "ok", "fid_features": "digits-features@x",
                "x_fingerprint": [fid, hash(model) % 97], "x_rms": 1.0,
                "state_dtype": "float32", "fid_floor": 1.9, "fid_floor_sd": 1.0,
                "train_distinct": None}

    pix = {"dpmpp_2m": [5.0, 5.2, 4.9, 5.1], "unipc_bh2": [5.1, 5.2, 5.0, 5.2],
           "euler": [9.0, 9.4, 8.8, 9.1], "heun": [7.0, 7.3, 6.8, 7.2]}
    lat = {"dpmpp_2m": [3.0, 3.1, 2.9, 3.0], "unipc_bh2": [6.0, 6.3, 5.8, 6.1],
           "euler": [4.0, 4.2, 3.9, 4.1], "heun": [3.05, 3.12, 2.95, 3.02]}
    df = pd.DataFrame([row("digits-rf", s, b) for s, b in pix.items()]
                      + [row("digits-latent-rf", s, b) for s, b in lat.items()]
                      + [row("digits-latent-vp", s, b) for s, b in lat.items()])
    assert pixel_twin("digits-latent-rf", ["digits-rf"]) == "digits-rf"
    assert pixel_twin("digits-latent-vp", ["digits-rf"]) is None
    assert pixel_twin("digits-rf", ["digits-rf"]) is None
    t = latent_pixel_table(df)
    assert len(t) == 1                                   # digits-latent-vp has no twin here
    r = t.iloc[0]
    assert r["pixel model"] == "digits-rf" and r["latent model"] == "digits-latent-rf"
    assert r["solvers"] == 4
    assert r["pixel group 1"] == "dpmpp_2m, unipc_bh2"
    assert r["latent group 1"].startswith("dpmpp_2m")
    assert "unipc_bh2" not in r["latent group 1"]
    assert r["pixel best in latent g1"] == "yes"
    order = list(pix)
    rho = sps.spearmanr([sum(pix[s]) / 4 for s in order], [sum(lat[s]) / 4 for s in order])[0]
    assert r["rank corr. ± se"].startswith(f"{rho:.2f}") or r["rank corr. ± se"].startswith(
        f"{rho:.3g}")
    assert "±" in r["rank corr. ± se"]
    # best cells: latent dpmpp_2m (3.0) vs pixel dpmpp_2m (5.05), paired over the 4 blocks
    from samplerbench.bench import stats
    want = stats.paired(3.0, lat["dpmpp_2m"], 5.05, pix["dpmpp_2m"])
    assert r["latent − pixel (best cells, paired)"].startswith(f"{want['diff']:.3g}"[:4])
    assert r["best FID pixel / latent"].startswith("5.05")
