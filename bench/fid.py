"""FID with its protocol pinned: feature network, sample count, reference statistics, seeds.

For 8x8 digits the feature network is a small classifier trained here on scikit-learn's digits
(``samplerbench train digits-features``, shipped as safetensors with a card recording its test
accuracy); FID is torchmetrics' ``FrechetInceptionDistance`` with that network as ``feature``
(its 64-D penultimate layer).  Reference statistics of the training data are computed once and
cached under a hash of (data, feature weights).  Inception is only used when its weights are
present locally -- nothing is downloaded.

Rows record ``fid_features`` as ``<network>@<weights hash>/ref@<reference hash>``; the sample
count is ``n_samples``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from bench.metrics import frechet_moments as frechet_distance  # noqa: F401  (re-exported)
from models.errors import UserError

CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
FEATURES_NAME = "digits-features"
MIN_SAMPLES = 128          # > 64 features: a non-singular sample covariance, with margin


class DigitsFeatures(nn.Module):
    """A small CNN classifier for 8x8 digits; ``forward`` returns the 64-D penultimate features
    (what FID compares), ``logits`` the class scores.  Input: images in [0, 1], [B, 1, 8, 8]."""

    num_features = 64

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.body(x.reshape(-1, 1, 8, 8).float())

    def logits(self, x):
        return self.head(self.forward(x))


def _digits01():
    from models.gmm import digits_data

    x, y = digits_data(scale=False)                 # pixel values 0..16
    return (x / 16.0).reshape(-1, 1, 8, 8).float(), y


def train_features(out_dir: Path | None = None, seed: int = 0, epochs: int = 60) -> Path:
    """Train the digits feature network from a fixed seed (about 10 s on one CPU core) and write
    ``digits-features.safetensors`` + ``digits-features.json`` (card with test accuracy)."""
    out_dir = Path(out_dir or CHECKPOINTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # one thread: the same reductions, the same weights
    try:
        return _train_features(out_dir, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train_features(out_dir: Path, seed: int, epochs: int) -> Path:
    from safetensors.torch import save_file
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    x, y = _digits01()
    idx_tr, idx_te = train_test_split(range(len(y)), test_size=0.25, random_state=seed,
                                      stratify=y.numpy())
    xtr, ytr, xte, yte = x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]
    net = DigitsFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            # light augmentation: pixel noise, so generated samples are not out of distribution
            xb = (xtr[b] + 0.03 * torch.randn(xtr[b].shape, generator=g)).clamp(0, 1)
            loss = nn.functional.cross_entropy(net.logits(xb), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net.logits(xte).argmax(1) == yte).float().mean())
        train_acc = float((net.logits(xtr).argmax(1) == ytr).float().mean())
    path = out_dir / f"{FEATURES_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    card = {"name": FEATURES_NAME, "task": "8x8 digit classification (FID feature network)",
            "data": "sklearn.datasets.load_digits, pixels / 16, stratified 75/25 split "
                    f"(random_state={seed})",
            "architecture": "conv3x3(16)-relu-conv3x3(32)-relu-avgpool2-linear(64)-relu | linear(10)",
            "features": "64-D penultimate layer", "loss": "cross-entropy", "epochs": epochs,
            "seed": seed, "test_accuracy": round(acc, 4), "train_accuracy": round(train_acc, 4),
            "train_seconds": round(time.time() - t0, 1), "weights_sha256": sha256(path)}
    (out_dir / f"{FEATURES_NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_features(path: Path | None = None) -> tuple[DigitsFeatures, str]:
    """The shipped feature network (eval mode) and its weights hash."""
    from safetensors.torch import load_file

    path = Path(path or CHECKPOINTS / f"{FEATURES_NAME}.safetensors")
    if not path.exists():
        raise UserError("fid features", str(path),
                        hint="run `samplerbench train digits-features` to create it")
    net = DigitsFeatures()
    net.load_state_dict(load_file(str(path)))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, sha256(path)[:12]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] (digits / 8 - 1) -> feature-network input [0, 1], clamped."""
    return ((x.float() + 1.0) / 2.0).clamp(0, 1).reshape(-1, 1, 8, 8)


class DigitsFID:
    """FID of generated digits against the training set, with a pinned protocol."""

    def __init__(self, cache_dir: Path | None = None, min_samples: int = MIN_SAMPLES):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.net, self.weights_hash = load_features()
        self.min_samples = min_samples
        self.metric = FrechetInceptionDistance(feature=self.net, normalize=True,
                                               reset_real_features=False)
        real, _ = _digits01()
        self.ref_hash = hashlib.sha256(real.numpy().tobytes() + self.weights_hash.encode()
                                       ).hexdigest()[:12]
        cache = Path(cache_dir) / f"fidref-{self.ref_hash}.safetensors" if cache_dir else None
        if cache is not None and cache.exists():
            from safetensors.torch import load_file

            st = load_file(str(cache))
            for k in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
                setattr(self.metric, k, st[k])
        else:
            self.metric.update(real, real=True)
            if cache is not None:
                from safetensors.torch import save_file

                cache.parent.mkdir(parents=True, exist_ok=True)
                save_file({k: getattr(self.metric, k).contiguous() for k in (
                    "real_features_sum", "real_features_cov_sum", "real_features_num_samples")},
                    str(cache))

    @property
    def protocol(self) -> str:
        return f"{FEATURES_NAME}@{self.weights_hash}/ref@{self.ref_hash}"

    def __call__(self, samples: torch.Tensor) -> float:
        """FID of ``samples`` (model space, [N, 1, 8, 8] or [N, 64], values ~[-1, 1])."""
        n = samples.shape[0]
        if n < self.min_samples:
            raise UserError("samples", n, hint=f"FID with {self.net.num_features}-D features "
                            f"needs at least {self.min_samples} samples (the protocol's minimum)")
        self.metric.reset()                      # keeps the real statistics
        self.metric.update(to_unit(samples), real=False)
        return float(self.metric.compute())
