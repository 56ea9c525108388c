"""Model dtype as an axis, solver state in its own dtype (CastDenoiser)."""

from __future__ import annotations

import json
import textwrap

import torch

from samplerbench.bench.cli import main
from samplerbench.models.denoiser import CastDenoiser
from samplerbench.models.zoo import load_model


def test_cast_denoiser_runs_the_model_in_its_dtype():
    m = load_model("gmm64")
    seen = {}

    class Spy(type(m)):
        def forward(self, x, t, **cond):
            seen["x"], seen["t"] = x.dtype, t.dtype
            return super().forward(x, t, **cond)

    spy = Spy(m.mixture, m.schedule, m.data_shape)
    c = CastDenoiser(spy, torch.bfloat16)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float32) * 5
    out = c(x, torch.full((3,), 5.0))
    assert out.dtype == torch.float32 and seen == {"x": torch.bfloat16, "t": torch.float32}
    ref = m(x.double(), torch.full((3,), 5.0, dtype=torch.float64))
    rel = float((out.double() - ref).abs().max() / ref.abs().max())
    assert 1e-4 < rel < 0.2      # bf16 rounding (8-bit mantissa) in x and in the mixture log-densities


def test_dtype_axis_in_a_matrix(tmp_path, capsys):
    spec = tmp_path / "p.toml"
    spec.write_text(textwrap.dedent("""
        models = ["gmm64"]
        solvers = ["heun"]
        steps = [32]
        samples = 8
        dtype = ["float32", "bfloat16"]
        threads = 1
        [timing]
        repeats = 1
    """))
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    rows = {r["dtype"]: r for r in map(json.loads, (tmp_path / "o" / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {"float32", "bfloat16"}
    assert rows["float32"]["state_dtype"] == rows["bfloat16"]["state_dtype"] == "float32"
    assert rows["bfloat16"]["case_id"] != rows["float32"]["case_id"]
    # at 32 Heun steps the float32 error is the discretisation error; bf16 adds rounding error
    assert rows["bfloat16"]["err_rms"] > 1.5 * rows["float32"]["err_rms"]
