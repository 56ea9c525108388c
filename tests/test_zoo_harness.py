"""Trained models in the harness: the guidance axis (NFE vs forward passes), skips for
unconditional models, weak metrics per dataset."""

from __future__ import annotations

import json
import textwrap

from samplerbench.bench.cli import main


def test_guidance_axis_and_dataset_metrics(tmp_path):
    spec = tmp_path / "g.toml"
    spec.write_text(textwrap.dedent("""
        models = ["digits-cond-rf", "moons-rf"]
        solvers = ["heun"]
        steps = [4]
        samples = 8
        guidance = [0.0, 2.0]
        threads = 1
        [metrics]
        error = false
        [timing]
        repeats = 1
        warmup = 0
    """))
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    g = {(r["model"], r["guidance"]): r for r in rows}
    w2 = g[("digits-cond-rf", 2.0)]
    assert w2["status"] == "ok" and w2["nfe"] == 7 and w2["forward_passes"] == 14
    assert g[("digits-cond-rf", 0.0)]["nfe"] == 7
    assert w2["fid"] is None            # 8 samples: below the FID protocol's minimum, not computed
    for w in (0.0, 2.0):
        assert g[("moons-rf", w)]["status"] == "skipped"
        assert "digits-cond-rf" in g[("moons-rf", w)]["message"]

    spec.write_text(textwrap.dedent("""
        models = ["moons-rf"]
        solvers = ["heun"]
        steps = [4, 16]
        samples = 256
        threads = 1
        [metrics]
        error = false
        [timing]
        repeats = 1
        warmup = 0
    """))
    assert main(["run", str(spec), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "m" / "rows.jsonl").read_text().splitlines()]
    by = {r["steps"]: r for r in rows}
    assert by[4]["fid_features"] == "data:moons-moments"
    assert by[16]["swd"] < by[4]["swd"]            # more steps, closer to the data


def test_preview_writes_pngs_and_the_report_shows_them(tmp_path):
    assert main(["preview", "moons-rf,digits-rf", "--out", str(tmp_path), "--steps", "4",
                 "--n", "20"]) == 0
    assert (tmp_path / "samples_moons-rf.png").stat().st_size > 5000
    assert (tmp_path / "samples_digits-rf.png").stat().st_size > 5000
    assert main(["preview", "nope", "--out", str(tmp_path)]) == 2
