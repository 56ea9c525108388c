"""Blow-up is a status (issue 17): a finite result far outside the model's data scale is recorded
``diverged`` with the reason, a strong reference that blew up leaves ``err_rms`` null, and
``--recompute`` / ``--recompute-if`` compute published cells again under the rule."""

import json

import torch

from samplerbench.bench.cli import main
from samplerbench.bench.quality import BLOWUP_FACTOR, QualityMetrics
from samplerbench.models.zoo import load_model


def _rows(d):
    return [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines() if line]


def test_blowup_rule_on_data_scale():
    q = QualityMetrics()
    den = load_model("gmm64")
    scale = q.data_rms(den)
    assert 0.8 < scale < 0.95                                  # exact: 0.877
    ok = den.mixture.sample(64, torch.Generator().manual_seed(0)).reshape(64, 1, 8, 8)
    assert q.blowup(den, ok, 0.0) is None
    bad = ok.clone()
    bad[3] *= 100.0                                           # one sample far out
    msg = q.blowup(den, bad, 0.0)
    assert msg.startswith("blew up: 1 of 64 samples have RMS above") and f"{BLOWUP_FACTOR:g} x" in msg
    assert q.blowup(den, ok * (BLOWUP_FACTOR / 4), 0.0) is None      # per-sample RMS <= 1.6x


def test_unstable_solver_is_recorded_diverged_and_recompute(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--models", "gmm64", "--solvers", "torchsde_reversible_heun,euler",
            "--steps", "8", "--samples", "16", "--dtype", "float64", "--noise", "brownian",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = {r["solver"]: r for r in _rows(out)}
    rh = rows["torchsde_reversible_heun"]
    assert rh["status"] == "diverged" and rh["message"].startswith("blew up: 16 of 16 samples")
    assert rh["fid"] is None and rh["err_rms"] is None
    assert rows["euler"]["status"] == "ok" and rows["euler"]["x_rms_max"] < 3
    n = len(_rows(out))
    assert main(args + ["--recompute", "euler"]) == 0                 # one more euler row
    assert [r["solver"] for r in _rows(out)[n:]] == ["euler"]
    assert main(args + ["--recompute-if", "x_rms_max>0.1"]) == 0      # euler's row again
    assert [r["solver"] for r in _rows(out)[n + 1:]] == ["euler"]
    assert main(args + ["--recompute", "heun"]) == 2                   # not in this run
    assert main(args + ["--recompute-if", "x_rms_max>>1"]) == 2
