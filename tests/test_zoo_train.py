"""models/train.py: short runs write safetensors + a model card that load back, are reproducible
from the seed, and bad names are rejected with the valid choices."""

from __future__ import annotations

import json

import pytest
import torch

from samplerbench.models.errors import UserError
from samplerbench.models.nets import load_checkpoint
from samplerbench.models.train import available_recipes, train


def test_recipes_cover_the_shipped_models():
    assert available_recipes() == sorted(["moons-vp", "moons-rf", "checkerboard-vp",
                                          "checkerboard-rf", "digits-vp", "digits-rf",
                                          "digits-cond-rf", "digits-ae", "digits-latent-vp",
                                          "digits-latent-rf"])


def test_short_run_is_reproducible_and_loads(tmp_path):
    a = train("moons-vp", out_dir=tmp_path / "a", seed=3, steps=15, threads=1, log=None)
    b = train("moons-vp", out_dir=tmp_path / "b", seed=3, steps=15, threads=1, log=None)
    ca, cb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ca["weights_sha256"] == cb["weights_sha256"]
    assert ca["steps"] == 15 and ca["seed"] == 3 and ca["final_val_loss"] > 0
    den = load_checkpoint("moons-vp", tmp_path / "a")
    assert den.prediction == "eps" and den.schedule.name == "vp-linear"
    out = den(torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_conditional_recipe_runs(tmp_path):
    path = train("digits-cond-rf", out_dir=tmp_path, steps=2, threads=1, log=None)
    den = load_checkpoint("digits-cond-rf", tmp_path)
    assert den.num_classes == 10 and json.loads(path.read_text())["net"]["num_classes"] == 10
    x = torch.randn(2, 1, 8, 8)
    assert den(x, torch.full((2,), 0.5), y=torch.tensor([3, 10])).shape == x.shape


def test_bad_arguments():
    with pytest.raises(UserError, match="moons-vp"):
        train("moons-ve")
    with pytest.raises(UserError, match="steps"):
        train("moons-vp", steps=0)
