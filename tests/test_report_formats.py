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
            if k in ("solver_params", "grid_params"):          # nested: JSON text, as in CSV
                got = json.loads(got)
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
        assert r["kid"] is not None and r["kid_std"] > 0
        assert r["kid_protocol"].startswith(r["fid_features"] + "/poly3")
        assert "subset_size=128" in r["kid_protocol"]
    assert digits[4]["kid"] < digits[2]["kid"]               # measured 0.27 vs 0.72
    for r in rows:
        if r["model"] == "gmm2d":                            # KID is for digits models only
            assert r["kid"] is None and r["kid_protocol"] is None and r["fid"] is not None
    assert main(["report", str(out), "--format", "md,html,latex"]) == 0
    md = (out / "report" / "README.md").read_text()
    section = md.split("## digits-rf")[1].split("\n## ")[0]
    assert "### KID, mean ± std over subsets (NFE)" in section
    kid2 = f"{digits[2]['kid']:.2e} ± {digits[2]['kid_std']:.1e} (2)"
    assert f"| euler | {kid2} |" in section
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


def test_headline_table_ranks_the_best_fid_within_each_budget():
    import pandas as pd

    from samplerbench.bench.report import headline_table

    def row(solver, nfe, fid, model="digits-vp", feats="digits-features@x", status="ok"):
        return {"model": model, "label": solver, "nfe": nfe, "fid": fid, "status": status,
                "fid_features": feats}

    df = pd.DataFrame([
        row("euler", 8, 40.0), row("euler", 16, 20.0), row("euler", 32, 11.0),
        row("dpmpp_2m", 8, 12.0), row("dpmpp_2m", 16, 9.0), row("dpmpp_2m", 64, 8.0),
        row("heun", 7, 90.0), row("heun", 31, 10.0), row("heun", 9, 1.0, status="diverged"),
        row("euler", 8, 0.1, model="gmm64", feats="data:exact-moments"),   # not a learned FID
    ])
    t = headline_table(df, budgets=(10, 40))
    assert list(t.columns) == ["digits-vp ≤ 10 NFE", "digits-vp ≤ 40 NFE"]
    assert list(t.index) == ["dpmpp_2m", "euler", "heun"]          # by the first column
    assert t.loc["dpmpp_2m", "digits-vp ≤ 10 NFE"] == "12.0 (8) #1"
    assert t.loc["heun", "digits-vp ≤ 10 NFE"] == "90.0 (7) #3"      # the diverged cell is out
    assert t.loc["dpmpp_2m", "digits-vp ≤ 40 NFE"] == "9.0 (16) #1"
    assert t.loc["heun", "digits-vp ≤ 40 NFE"] == "10.0 (31) #2"
    assert t.loc["euler", "digits-vp ≤ 40 NFE"] == "11.0 (32) #3"
    assert headline_table(df[df["model"] == "gmm64"]).empty
    # equal FIDs (two names of one update give the same samples) share a rank; the order of
    # tied rows is by name, whatever the row order or the hash seed
    tie = pd.concat([df, pd.DataFrame([row("ddim", 8, 12.0)])])
    for frame in (tie, tie.iloc[::-1]):
        t = headline_table(frame, budgets=(10,))
        assert list(t.index) == ["ddim", "dpmpp_2m", "euler", "heun"]
        assert t.loc["ddim"].iloc[0] == "12.0 (8) #1" and t.loc["dpmpp_2m"].iloc[0] == "12.0 (8) #1"
        assert t.loc["euler"].iloc[0] == "40.0 (8) #3"


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
