"""FID protocol: the shipped digits feature network, torchmetrics' FrechetInceptionDistance,
reference statistics cached by hash (issue 6)."""

from __future__ import annotations

import json

import pytest
import torch

from samplerbench.bench.fid import (CHECKPOINTS, DigitsFID, _digits01, frechet_distance, load_features,
                       sha256, to_unit)
from samplerbench.models.errors import UserError
from samplerbench.models.gmm import digits_data


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
    from samplerbench.bench.cli import main

    assert main(["train", "digits-features", "--out", str(tmp_path)]) == 0
    new = json.loads((tmp_path / "digits-features.json").read_text())
    shipped = json.loads((CHECKPOINTS / "digits-features.json").read_text())
    assert new["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=0.01)
    assert main(["train", "nope"]) == 2


# --- KID (spec [metrics] kid = true) -----------------------------------------------------------

@pytest.fixture(scope="module")
def kid(tmp_path_factory):
    return DigitsFID(cache_dir=tmp_path_factory.mktemp("kidcache"), kid=True)


def _train_subset(n=512):
    x, _ = digits_data()
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    return x.reshape(-1, 1, 8, 8)[idx]


def test_kid_of_reference_digits_is_near_zero_and_grows_with_perturbation(kid):
    x = _train_subset()
    own = kid.kid(x, blocks=8)
    g = torch.Generator().manual_seed(1)
    noisy = [kid.kid(x + s * torch.randn(x.shape, generator=g, dtype=x.dtype))["kid"]
             for s in (1.0, 2.0)]
    assert abs(own["kid"]) < 0.01                     # measured -1.6e-3 (se 2.1e-3)
    assert 0 < own["kid_se"] < 0.01
    assert 0.03 < noisy[0] < noisy[1]                 # measured 0.068 and 0.34
    assert noisy[0] > 5 * abs(own["kid"])
    # a different distribution: the digits 0-4 only, against all ten classes
    x0, y0 = digits_data()
    other = kid.kid(x0[y0 < 5][:512].reshape(-1, 1, 8, 8))["kid"]
    assert other > 0.05                               # measured 0.13


def test_kid_is_the_unbiased_mmd2_of_torchmetrics_over_all_samples(kid):
    """With as many generated samples as reference digits (1797), torchmetrics' KID with one
    subset of that size uses every sample on both sides: the same U-statistic."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    from samplerbench.bench.fid import to_unit

    x, _ = digits_data()
    x = x.reshape(-1, 1, 8, 8)
    g = torch.Generator().manual_seed(3)
    gen = x[torch.randperm(x.shape[0], generator=g)] + 0.3 * torch.randn(x.shape, generator=g,
                                                                       dtype=x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tm = KernelInceptionDistance(feature=kid.net, subsets=1, subset_size=x.shape[0],
                                     gamma=kid.gamma, normalize=True)
    tm.update(to_unit(x), real=True)
    tm.update(to_unit(gen), real=False)
    ours = kid.kid(gen)
    # torchmetrics sums its kernel matrices in float32, and KID (4.3e-4 here) is a difference of
    # O(1) kernel means: measured agreement 2e-4 relative (ours is float64)
    assert ours["kid"] == pytest.approx(float(tm.compute()[0]), rel=2e-3)
    assert ours["kid_protocol"] == f"{kid.protocol}/{kid.kid_kernel},unbiased-mmd2-all-samples"


def test_kid_blocks_are_the_kid_of_the_samples_outside_each_block(kid):
    from samplerbench.bench.stats import jackknife_se, leave_one_out

    x = _train_subset(400)
    out = kid.kid(x, blocks=4)
    direct = [kid.kid(x[i])["kid"] for i in leave_one_out(400, 4)]
    assert out["kid_blocks"] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert out["kid_se"] == pytest.approx(jackknife_se(direct))
    with pytest.raises(UserError, match="at least 2 samples"):
        kid.kid(x[:1])


def test_fid_equals_torchmetrics_and_its_blocks_the_fid_without_each_block(fid):
    from samplerbench.bench.stats import leave_one_out

    x = _train_subset(512) + 0.1 * torch.randn(512, 1, 8, 8, generator=torch.Generator()
                                               .manual_seed(2), dtype=torch.float64)
    s = fid.score(x, blocks=4)
    assert s["fid"] == pytest.approx(fid.torchmetrics_fid(x), rel=1e-5)
    assert s["fid_blocks"] == pytest.approx([fid(x[i]) for i in leave_one_out(512, 4)], rel=1e-12)
    assert s["fid_se"] > 0
    small = fid.score(x[:120], blocks=4)                 # below the protocol's minimum
    assert "fid" not in small and "120 samples < the protocol's minimum 128" in small["note"]
    no_se = fid.score(x[:128], blocks=4)                 # 96 outside a block: no jackknife
    assert no_se["fid"] > 0 and "fid_se" not in no_se


def test_floor_is_the_fid_of_real_digits_at_the_same_sample_count(fid):
    """Real digits drawn with replacement from the reference set: FID ~ c / n (c ~ 3,800: 25 +- 6
    at 128 samples, 3.8 +- 1.1 at 1024; disjoint draws without replacement, which share the
    reference's own points, measured 25.6 +- 6.7 and 1.5 +- 0.4)."""
    f128, f1024 = fid.floor(128), fid.floor(1024)
    assert 15 < f128["fid_floor"] < 35 and 3 < f128["fid_floor_sd"] < 12
    assert 2.5 < f1024["fid_floor"] < 5.5 and f1024["fid_floor_sd"] < 2.0
    assert fid.floor(128) == f128                        # seeded


def test_kid_reference_features_are_cached(tmp_path):
    a = DigitsFID(cache_dir=tmp_path, kid=True)
    assert (tmp_path / f"kidref-{a.ref_hash}.safetensors").exists()
    b = DigitsFID(cache_dir=tmp_path, kid=True)                # loads the cached features
    assert torch.equal(a.real_features(), b.real_features())
    assert a.real_features().shape == (1797, 64)


# --- Inception features (spec [metrics] fid_features = "inception") ----------------------------

class _StubInception(torch.nn.Module):
    """Stands in for torchmetrics' NoTrainInceptionV3: records what it is fed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return x.float().mean((2, 3))[:, :1].repeat(1, 2048)


def test_inception_input_is_299x299_rgb_uint8_in_batches():
    from samplerbench.bench.fid import InceptionFeatures

    stub = _StubInception()
    feats = InceptionFeatures(net=stub, batch=64)
    x, _ = digits_data()
    u = to_unit(x[:100])
    out = feats(u)
    assert out.shape == (100, 2048)
    assert [s.shape[0] for s in stub.seen] == [64, 36]
    first = stub.seen[0]
    assert first.dtype == torch.uint8 and first.shape[1:] == (3, 299, 299)
    assert torch.equal(first[:, 0], first[:, 1]) and torch.equal(first[:, 0], first[:, 2])
    # bilinear upsampling keeps the corner pixels; values are [0, 1] * 255
    assert torch.equal(first[:, 0, 0, 0], (u[:64, 0, 0, 0] * 255).round().to(torch.uint8))
    assert torch.equal(first[:, 0, -1, -1], (u[:64, 0, -1, -1] * 255).round().to(torch.uint8))


def _inception_available() -> bool:
    import importlib.util
    import os
    from pathlib import Path

    from samplerbench.bench.fid import INCEPTION_ENV

    path = os.environ.get(INCEPTION_ENV)
    return bool(path) and Path(path).is_file() and \
        importlib.util.find_spec("torch_fidelity") is not None


def test_inception_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    from samplerbench.bench.fid import INCEPTION_ENV, inception_weights

    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(UserError) as exc:
        inception_weights()
    msg = str(exc.value)
    assert "fid_features" in msg and INCEPTION_ENV in msg and "absent.pth" in msg
    assert "https://github.com/toshas/torch-fidelity/releases/" in msg
    with pytest.raises(UserError, match=INCEPTION_ENV):
        DigitsFID(features="inception")
    with pytest.raises(UserError, match="fid_features"):
        DigitsFID(features="vgg")


def test_inception_spec_without_weights_exits_2_before_writing(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from samplerbench.bench.fid import INCEPTION_ENV

    spec = tmp_path / "inc.toml"
    spec.write_text('models = ["digits-rf"]\nsolvers = ["euler"]\nsteps = [2]\nsamples = 128\n'
                    '[metrics]\nfid_features = "inception"\n')
    env = {k: v for k, v in os.environ.items() if k != INCEPTION_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "samplerbench", "run", str(spec), "--out",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True,
                       env=env, cwd=root, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "fid_features" in r.stderr and INCEPTION_ENV in r.stderr
    assert "not set" in r.stderr
    assert not (tmp_path / "out").exists()
    # an unknown feature name is refused too, with the valid choices
    spec.write_text('models = ["digits-rf"]\nsolvers = ["euler"]\nsteps = [2]\n'
                    '[metrics]\nfid_features = "vgg"\n')
    r = subprocess.run([sys.executable, "-m", "samplerbench", "run", str(spec), "--out",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True,
                       env=env, cwd=root, timeout=300)
    assert r.returncode == 2 and "metrics.fid_features" in r.stderr and "auto" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _inception_available(), reason="Inception FID needs torch_fidelity and "
                    "its weights file named by $SAMPLERBENCH_INCEPTION_WEIGHTS (never downloaded)")
def test_inception_fid_positive_path(tmp_path):
    f = DigitsFID(cache_dir=tmp_path, features="inception")
    assert f.protocol.startswith("inception-v3-compat@")
    x = _train_subset(256)
    g = torch.Generator().manual_seed(0)
    clean = f(x)
    noisy = f(x + 1.0 * torch.randn(x.shape, generator=g, dtype=x.dtype))
    assert 0 <= clean < noisy


def test_a_truncated_reference_cache_is_recomputed_with_a_warning(tmp_path):
    a = DigitsFID(cache_dir=tmp_path, kid=True)
    fidref = tmp_path / f"fidref-{a.ref_hash}.safetensors"
    kidref = tmp_path / f"kidref-{a.ref_hash}.safetensors"
    good = fidref.read_bytes()
    fidref.write_bytes(good[: len(good) // 2])                 # a kill mid-write, before atomics
    kidref.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="unreadable.*recomputing"):
        b = DigitsFID(cache_dir=tmp_path, kid=True)
    assert torch.equal(b.ref_cov, a.ref_cov) and torch.equal(b.real_features(), a.real_features())
    assert fidref.read_bytes() == good                          # rewritten whole
    assert not list(tmp_path.glob(".*.tmp"))                    # no temporary left behind
