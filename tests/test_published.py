"""A published number is reproducible: a cell of results/headline, computed again from its spec
by the library, gives the FID and KID of its row (float32 networks: the published run sharded
the 2048 samples over two processes, so batch-dependent kernels allow a small tolerance)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "results" / "headline" / "rows.jsonl"


def _published(model, solver, budget):
    for line in ROWS.read_text().splitlines():
        r = json.loads(line)
        if (r["model"], r["solver"], r.get("nfe_budget")) == (model, solver, budget):
            return r
    return None


@pytest.mark.skipif(not ROWS.exists(), reason="results/headline not published in this checkout")
def test_a_published_headline_cell_reproduces_its_fid(tmp_path):
    from samplerbench.bench.runner import Runner, expand_cells
    from samplerbench.bench.spec import load_spec

    row = _published("digits-vp", "rk4", 4)           # 1 model call: the cheapest cell
    assert row is not None and row["status"] == "ok"
    spec = load_spec(ROOT / "bench" / "matrices" / "headline.toml")
    cell = next(c for c in expand_cells(spec, "cpu") if c.case_id == row["case_id"])
    again = Runner(spec, tmp_path, progress=False).run_cell(cell)
    assert (again["steps"], again["nfe"], again["n_samples"]) == (row["steps"], row["nfe"], 2048)
    assert again["fid"] == pytest.approx(row["fid"], rel=1e-4)
    assert again["kid"] == pytest.approx(row["kid"], rel=1e-3)
    assert again["fid_blocks"] == pytest.approx(row["fid_blocks"], rel=1e-4)
    assert again["fid_floor"] == pytest.approx(row["fid_floor"], rel=1e-9)
