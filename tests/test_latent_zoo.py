"""The shipped latent models (issue 14): ``digits-ae`` (a KL-regularised autoencoder of the 8x8
digits to 2x4x4 latents) and ``digits-latent-rf`` / ``digits-latent-vp`` (denoisers of its scaled
latents).  The cards' numbers are recomputed from the shipped weights; a latent model decodes to
digits, its FID is computed on decoded images; a missing or mismatched decoder exits 2; the
recipes are reproducible from the seed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from samplerbench.bench.cli import main
from samplerbench.models.data import digits_split
from samplerbench.models.errors import UserError
from samplerbench.models.nets import CHECKPOINT_DIR, load_autoencoder, load_checkpoint
from samplerbench.models.train import train
from samplerbench.models.zoo import available_models, load_model

LATENT_MODELS = ("digits-latent-rf", "digits-latent-vp")


def test_autoencoder_card_matches_its_weights():
    ae, card = load_autoencoder("digits-ae")
    (xt, _), (xv, _) = digits_split()
    with torch.no_grad():
        mt = ae.encode(xt)[0].double()
        rec = ae.decode(ae.encode(xv)[0])
    mse = float((rec - xv).double().pow(2).mean())
    assert mse == pytest.approx(card["reconstruction"]["val_mse"], rel=1e-5)
    # a useful autoencoder: held-out error well below one grey level of the digits (2/16)
    assert card["reconstruction"]["val_rms"] < 0.125
    assert card["latent_shape"] == [2, 4, 4] and card["compression"] == 2.0
    # the factors make the training latents zero-mean, unit-variance (the SD3 / Flux convention)
    scaled = (mt - card["shift_factor"]) * card["scaling_factor"]
    assert float(scaled.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(scaled.std()) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_latent_model_loads_with_its_decoder(name):
    assert name in available_models()
    den = load_model(name)
    card = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
    ae_card = json.loads((CHECKPOINT_DIR / "digits-ae.json").read_text())
    assert den.data_shape == (2, 4, 4) and card["decoder"] == "digits-ae"
    assert card["decoder_sha256"] == ae_card["weights_sha256"]
    z = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    img = den.decode(z)
    assert img.shape == (5, 1, 8, 8) and float(img.abs().max()) <= 1.0
    # the decoder is the autoencoder's, at the card's factors
    ae, _ = load_autoencoder("digits-ae")
    with torch.no_grad():
        want = ae.decode(z.float() / ae_card["scaling_factor"] + ae_card["shift_factor"])
    assert torch.equal(img.float(), want)
    out = den(z, torch.full((5,), 0.5, dtype=torch.float64))
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_decoded_training_latents_are_the_digits():
    """Encoding then decoding through the latent model's decoder reproduces the digits to the
    autoencoder's reconstruction error (the scaled latents are what the denoiser was trained on)."""
    den = load_model("digits-latent-rf")
    ae, card = load_autoencoder("digits-ae")
    _, (xv, _) = digits_split()
    with torch.no_grad():
        z = (ae.encode(xv)[0] - card["shift_factor"]) * card["scaling_factor"]
    rec = den.decode(z)
    assert float((rec - xv).pow(2).mean()) == pytest.approx(card["reconstruction"]["val_mse"],
                                                            rel=1e-4)


def _copy_models(tmp_path, names):
    for n in names:
        for ext in ("json", "safetensors"):
            shutil.copy(CHECKPOINT_DIR / f"{n}.{ext}", tmp_path / f"{n}.{ext}")


def test_missing_decoder_is_refused(tmp_path):
    _copy_models(tmp_path, ["digits-latent-rf"])
    with pytest.raises(UserError, match="decoder.*digits-ae"):
        load_checkpoint("digits-latent-rf", tmp_path)
    _copy_models(tmp_path, ["digits-ae"])
    (tmp_path / "digits-ae.safetensors").unlink()
    with pytest.raises(UserError, match="decoder weights"):
        load_checkpoint("digits-latent-rf", tmp_path)


def test_mismatched_decoder_is_refused(tmp_path):
    _copy_models(tmp_path, ["digits-latent-rf", "digits-ae"])
    card = json.loads((tmp_path / "digits-ae.json").read_text())
    card["latent_shape"] = [4, 4, 4]
    (tmp_path / "digits-ae.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match=r"decoder latent shape.*\[2, 4, 4\]"):
        load_checkpoint("digits-latent-rf", tmp_path)
    card["latent_shape"] = [2, 4, 4]
    card["weights_sha256"] = "0" * 64
    (tmp_path / "digits-ae.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="trained on the latents of 'digits-ae'"):
        load_checkpoint("digits-latent-rf", tmp_path)


def test_latent_recipes_are_reproducible(tmp_path):
    a = train("digits-ae", out_dir=tmp_path / "a", seed=1, steps=4, log=None)
    b = train("digits-ae", out_dir=tmp_path / "b", seed=1, steps=4, log=None)
    ca, cb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ca["weights_sha256"] == cb["weights_sha256"]
    assert ca["shift_factor"] == cb["shift_factor"] and ca["scaling_factor"] > 0
    lat = json.loads(train("digits-latent-rf", out_dir=tmp_path / "a", seed=1, steps=3,
                           log=None).read_text())
    assert lat["decoder"] == "digits-ae" and lat["decoder_sha256"] == ca["weights_sha256"]
    den = load_checkpoint("digits-latent-rf", tmp_path / "a")
    assert den.decode(torch.zeros(1, 2, 4, 4)).shape == (1, 1, 8, 8)
    with pytest.raises(UserError, match="train digits-ae --out"):
        train("digits-latent-vp", out_dir=tmp_path / "none", steps=2, log=None)


def test_cli_missing_decoder_exits_2(tmp_path, capsys, monkeypatch):
    from samplerbench.models import nets

    _copy_models(tmp_path, ["digits-latent-rf"])
    monkeypatch.setattr(nets, "CHECKPOINT_DIR", tmp_path)
    assert main(["sample", "digits-latent-rf", "euler", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "decoder" in err and "digits-ae" in err and "Traceback" not in err


def test_sample_and_run_use_decoded_images(tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "digits-latent-rf", "heun", "--steps", "6", "--n", "16",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["x"].shape == (16, 2, 4, 4) and f["images"].shape == (16, 1, 8, 8)
    assert main(["run", "--models", "digits-latent-rf", "--solvers", "euler", "--steps", "8",
                 "--samples", "256", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "rows.jsonl").read_text().splitlines()]
    (row,) = rows
    assert row["status"] == "ok" and row["metric_space"] == "decoded"
    assert row["decode_s"] is not None and row["decode_s"] >= 0
    assert row["fid"] is not None and row["fid"] > row["fid_floor"]
    assert row["fid_features"].startswith("digits")
