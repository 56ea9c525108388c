"""FID protocol: the shipped digits feature network, torchmetrics' FrechetInceptionDistance,
reference statistics cached by hash (issue 6)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.fid import (CHECKPOINTS, DigitsFID, _digits01, frechet_distance, load_features,
                       sha256, to_unit)
from models.errors import UserError
from models.gmm import digits_data


@pytest.fixture(scope="module")
def fid(tmp_path_factory):
    return DigitsFID(cache_dir=tmp_path_factory.mktemp("fidcache"))


def test_feature_network_card_matches_weights():
    card = json.loads((CHECKPOINTS / "digits-features.json").read_text())
    assert card["weights_sha256"] == sha256(CHECKPOINTS / "digits-features.safetensors")
    assert card["test_accuracy"] > 0.95
    net, _ = load_features()
    x, y = _digits01()
    assert float((net.logits(x).argmax(1) == y).float().mean()) > 0.97


def test_fid_of_the_training_set_against_itself_is_zero(fid):
    x, _ = digits_data()                          # model space [-1, 1]
    assert fid(x.reshape(-1, 1, 8, 8)) == pytest.approx(0.0, abs=1e-3)


def test_fid_grows_with_perturbation(fid):
    x, _ = digits_data()
    x = x.reshape(-1, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    vals = [fid(x + s * torch.randn(x.shape, generator=g, dtype=x.dtype)) for s in (0.05, 0.2, 0.5)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_fid_is_symmetric_and_matches_the_closed_form():
    net, _ = load_features()
    x, y = digits_data()
    a, b = x[y < 5], x[y >= 5]
    with torch.no_grad():
        fa, fb = net(to_unit(a)).double(), net(to_unit(b)).double()
    d_ab = frechet_distance(fa.mean(0), torch.cov(fa.T), fb.mean(0), torch.cov(fb.T))
    d_ba = frechet_distance(fb.mean(0), torch.cov(fb.T), fa.mean(0), torch.cov(fa.T))
    assert d_ab == pytest.approx(d_ba, rel=1e-8) and d_ab > 1.0
    from torchmetrics.image.fid import FrechetInceptionDistance

    m = FrechetInceptionDistance(feature=net, normalize=True)
    m.update(to_unit(a), real=True)
    m.update(to_unit(b), real=False)
    assert float(m.compute()) == pytest.approx(d_ab, rel=1e-3)


def test_too_few_samples_is_refused(fid):
    x, _ = digits_data()
    with pytest.raises(UserError, match="at least 128 samples"):
        fid(x[:100].reshape(-1, 1, 8, 8))


def test_reference_statistics_are_cached_by_hash(tmp_path):
    a = DigitsFID(cache_dir=tmp_path)
    files = list(tmp_path.glob("fidref-*.safetensors"))
    assert len(files) == 1 and a.ref_hash in files[0].name
    b = DigitsFID(cache_dir=tmp_path)                 # loads the cache
    x, _ = digits_data()
    s = x[:300].reshape(-1, 1, 8, 8)
    assert a(s) == pytest.approx(b(s), rel=1e-9)
    assert a.protocol == b.protocol and a.protocol.startswith("digits-features@")


def test_train_digits_features_reproduces_the_card(tmp_path):
    from bench.cli import main

    assert main(["train", "digits-features", "--out", str(tmp_path)]) == 0
    new = json.loads((tmp_path / "digits-features.json").read_text())
    shipped = json.loads((CHECKPOINTS / "digits-features.json").read_text())
    assert new["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=0.01)
    assert main(["train", "nope"]) == 2
