"""Hardening (issue 15, the rest): a kill at any point of a digits run -- inside a cache write
included -- is repaired by a rerun with the rows of an uninterrupted run; diagonal Gaussian
mixtures stay diagonal at d = 10,000; the spec check loads each model once; float32 rows under
torchrun agree with one process within the README's tolerance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from samplerbench.bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# the spec check loads each model once
# ------------------------------------------------------------------------------------------------

def test_a_run_loads_each_model_once(tmp_path, monkeypatch):
    import samplerbench.bench.runner as runner
    import samplerbench.models.zoo as zoo

    loads: list[str] = []
    real = zoo.load_model

    def counting(name):
        loads.append(name)
        return real(name)

    monkeypatch.setattr(zoo, "load_model", counting)        # parse_spec imports it from zoo
    monkeypatch.setattr(runner, "load_model", counting)
    gmm = tmp_path / "m.json"
    gmm.write_text(json.dumps({"weights": [1.0, 2.0], "means": [[0.0, 1.0], [1.0, 0.0]],
                               "stds": [0.5, 0.3]}))
    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent(f"""
        models = ["gmm2d", "gmm2d-rf", "gmm:{gmm}"]
        solvers = ["euler", "heun"]
        steps = [2, 3]
        samples = 4
        [metrics]
        nonconv = false
        error = false
        weak = false
        """))
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert sorted(loads) == sorted(["gmm2d", "gmm2d-rf", f"gmm:{gmm}"])
    assert len((tmp_path / "o" / "rows.jsonl").read_text().splitlines()) == 12
    # the same with the flags that rebuild the spec (dataclasses.replace) and the ad-hoc form
    loads.clear()
    assert main(["run", "--models", "gmm2d,gmm2d-vp", "--solvers", "euler", "--steps", "2",
                 "--samples", "4", "--error", "off", "--max-nfe", "100", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert sorted(loads) == ["gmm2d", "gmm2d-vp"]
    # the loaded models are not part of the spec's record
    doc = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert "loaded" not in doc["spec"]
