"""FID with its protocol pinned: feature network, sample count, reference statistics, seeds.

For 8x8 digits the feature network is a small classifier trained here on scikit-learn's digits
(``samplerbench train digits-features``, shipped as safetensors with a card recording its test
accuracy); FID is torchmetrics' ``FrechetInceptionDistance`` with that network as ``feature``
(its 64-D penultimate layer).  Reference statistics of the training data are computed once and
cached under a hash of (data, feature weights).  Inception is only used when its weights are
present locally -- nothing is downloaded.

Rows record ``fid_features`` as ``<network>@<weights hash>/ref@<reference hash>``; the sample
count is ``n_samples``.

``fid_features = "inception"`` (spec ``[metrics]``) swaps the feature network for torchmetrics'
Inception-v3 (2048-D pool features; digits upsampled to 299x299 and repeated to 3 channels), but
only when ``torch_fidelity`` is importable and its weights file is named by the environment
variable ``SAMPLERBENCH_INCEPTION_WEIGHTS``; otherwise a ``UserError`` says how to get them.

``kid = true`` adds KID with the same feature network and reference set: the unbiased MMD^2
U-statistic (as torchmetrics' ``KernelInceptionDistance`` per subset) over all generated samples
and all reference features, cubic polynomial kernel (for the digits network its gamma is
1 / (d * mean square of the reference features)): rows get ``kid``, ``kid_se`` (seed-block
jackknife), ``kid_blocks`` and the protocol in ``kid_protocol``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from samplerbench.bench.metrics import frechet_moments as frechet_distance  # noqa: F401  (re-exported)
from samplerbench.bench.store import load_tensors, save_tensors
from samplerbench.models.errors import UserError

CHECKPOINTS = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
FEATURES_NAME = "digits-features"
MIN_SAMPLES = 128          # > 64 features: a non-singular sample covariance, with margin
FID_FEATURES = ("auto", "inception")   # spec [metrics] fid_features
INCEPTION_ENV = "SAMPLERBENCH_INCEPTION_WEIGHTS"
INCEPTION_NAME = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 + INCEPTION_FILE)


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
    from samplerbench.models.gmm import digits_data

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


def inception_weights() -> Path:
    """The local Inception weights file for ``fid_features = "inception"``; a ``UserError``
    naming the field, the environment variable and how to get the file when it or
    ``torch_fidelity`` is missing.  Nothing is ever downloaded."""
    missing = []
    env = os.environ.get(INCEPTION_ENV)
    if not env:
        missing.append(f"${INCEPTION_ENV} is not set")
    elif not Path(env).is_file():
        missing.append(f"${INCEPTION_ENV}={env} is not a file")
    if importlib.util.find_spec("torch_fidelity") is None:
        missing.append("torch_fidelity is not installed (pip install torch-fidelity)")
    if missing:
        raise UserError("fid_features", "inception", hint=(
            "Inception features need torch-fidelity and its weights file on this machine ("
            + "; ".join(missing) + "): on a machine with internet download " + INCEPTION_URL
            + f", copy it here and set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}; nothing is "
            "downloaded at run time. Or use fid_features = \"auto\" (the digits feature network)"))
    return Path(env)


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (torch-fidelity's port, 2048-D pool features) for 8x8 digits:
    input [B, 1, 8, 8] (or [B, 64]) in [0, 1], upsampled bilinearly to 299x299, repeated to
    3 channels and quantised to uint8 (what the network expects), in batches of ``batch``."""

    num_features = 2048

    def __init__(self, weights_path: str | Path | None = None, net: nn.Module | None = None,
                 batch: int = 64):
        super().__init__()
        if net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            weights_path = inception_weights() if weights_path is None else weights_path
            net = NoTrainInceptionV3(name=INCEPTION_NAME, features_list=[str(self.num_features)],
                                     feature_extractor_weights_path=str(weights_path))
        self.net = net
        self.batch = batch

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8).float()
        x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return (x.repeat(1, 3, 1, 1).clamp(0, 1) * 255).round().to(torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        with torch.no_grad():
            return torch.cat([self.net(self.preprocess(x[i:i + self.batch])).reshape(
                -1, self.num_features).float() for i in range(0, x.shape[0], self.batch)])


class DigitsFID:
    """FID (and optionally KID) of generated digits against the training set, with a pinned
    protocol and seed-block uncertainty.  ``features``: "auto" (the shipped digits network) or
    "inception".

    FID is the Frechet distance between Gaussian fits of the features (torchmetrics'
    ``FrechetInceptionDistance`` keeps the reference statistics, cached by hash; the distance is
    ``bench.metrics.frechet_moments`` in float64, equal to torchmetrics' ``compute`` to ~1e-6,
    tested), so that the leave-one-block-out values of :mod:`samplerbench.bench.stats` cost one
    feature pass.  KID is the unbiased MMD^2 U-statistic with a cubic polynomial kernel over all
    generated samples against all reference features (no random subsets: the value is a function
    of the samples alone; its uncertainty is the seed-block jackknife, ``kid_se``)."""

    def __init__(self, cache_dir: Path | None = None, min_samples: int = MIN_SAMPLES,
                 features: str = "auto", kid: bool = False):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if features == "auto":
            self.net, self.weights_hash = load_features()
            self.feature_name = FEATURES_NAME
        elif features == "inception":
            path = inception_weights()
            self.net, self.weights_hash = InceptionFeatures(path), sha256(path)[:12]
            self.feature_name = INCEPTION_NAME
        else:
            raise UserError("fid_features", features, FID_FEATURES)
        self.min_samples = min_samples
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # sync_on_compute=False: under torchrun the runner gathers the samples and rank 0 alone
        # computes the metrics (a sync would wait forever for the other ranks)
        self.metric = FrechetInceptionDistance(feature=self.net, normalize=True,
                                               reset_real_features=False, sync_on_compute=False)
        real, _ = _digits01()
        self.ref_hash = hashlib.sha256(real.numpy().tobytes() + self.weights_hash.encode()
                                       ).hexdigest()[:12]
        keys = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
        cache = Path(cache_dir) / f"fidref-{self.ref_hash}.safetensors" if cache_dir else None
        st = load_tensors(cache, keys) if cache is not None else None
        if st is not None:
            for k in keys:
                setattr(self.metric, k, st[k])
        else:                                    # computed, and cached atomically
            self.metric.update(real, real=True)
            if cache is not None:
                save_tensors(cache, {k: getattr(self.metric, k) for k in keys})
        m = self.metric
        n_ref = m.real_features_num_samples.double()
        self.ref_mean = (m.real_features_sum.double() / n_ref)
        self.ref_cov = ((m.real_features_cov_sum.double()
                         - n_ref * torch.outer(self.ref_mean, self.ref_mean)) / (n_ref - 1))
        self._real_features = None
        self.kid_enabled = kid
        if kid:
            real_f = self.real_features().double()
            d = real_f.shape[1]
            if features == "inception":          # the standard KID kernel (Binkowski et al.)
                self.gamma, self.kid_kernel = 1.0 / d, "poly3,gamma=1/d"
            else:
                # the digits features are unnormalised ReLU outputs (RMS ~7): scale the kernel by
                # their mean square on the reference set, so (x.y gamma + 1)^3 stays O(1)
                ms = float(real_f.pow(2).mean())
                self.gamma, self.kid_kernel = 1.0 / (d * ms), f"poly3,gamma=1/(d*{ms:.4g})"
            k_yy = self._kernel(real_f, real_f)
            r = real_f.shape[0]
            self._kyy = float((k_yy.sum() - k_yy.diagonal().sum()) / (r * (r - 1)))

    @property
    def protocol(self) -> str:
        return f"{self.feature_name}@{self.weights_hash}/ref@{self.ref_hash}"

    @property
    def kid_protocol(self) -> str:
        return f"{self.protocol}/{self.kid_kernel},unbiased-mmd2-all-samples"

    def real_features(self) -> torch.Tensor:
        """Features of the 1797 training digits (the reference set), cached beside the FID
        statistics as ``kidref-<reference hash>.safetensors``."""
        if self._real_features is None:
            cache = (self.cache_dir / f"kidref-{self.ref_hash}.safetensors"
                     if self.cache_dir else None)
            st = load_tensors(cache, ("features",)) if cache is not None else None
            if st is not None:
                self._real_features = st["features"]
            else:
                with torch.no_grad():
                    self._real_features = self.net(_digits01()[0]).float()
                if cache is not None:
                    save_tensors(cache, {"features": self._real_features})
        return self._real_features

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Feature vectors [N, d] (float64) of model-space samples ([N, 1, 8, 8] or [N, 64],
        values ~[-1, 1])."""
        with torch.no_grad():
            return self.net(to_unit(samples.detach().cpu())).double()

    def fid_of_features(self, f: torch.Tensor) -> float:
        from samplerbench.bench.metrics import frechet_moments

        return frechet_moments(f.mean(0), torch.cov(f.T), self.ref_mean, self.ref_cov)

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T * self.gamma + 1.0) ** 3

    def _check_n(self, n: int) -> None:
        if n < self.min_samples:
            raise UserError("samples", n, hint=f"FID with {self.net.num_features}-D features "
                            f"needs at least {self.min_samples} samples (the protocol's minimum)")

    def __call__(self, samples: torch.Tensor) -> float:
        """FID of ``samples`` (model space, [N, 1, 8, 8] or [N, 64], values ~[-1, 1])."""
        self._check_n(samples.shape[0])
        return self.fid_of_features(self.features(samples))

    def torchmetrics_fid(self, samples: torch.Tensor) -> float:
        """torchmetrics' own ``compute`` on the same reference statistics (for cross-checks)."""
        self.metric.reset()                      # keeps the real statistics
        self.metric.update(to_unit(samples.detach().cpu()), real=False)
        return float(self.metric.compute())

    def score(self, samples: torch.Tensor, blocks: int | None) -> dict:
        """Row fields of the samples: ``fid``, ``fid_se``, ``fid_blocks`` (leave-one-block-out
        values, :mod:`samplerbench.bench.stats`), and with KID enabled ``kid``, ``kid_se``,
        ``kid_blocks``, ``kid_protocol``.  Below the protocol's minimum sample count FID is
        None and ``note`` says why."""
        from samplerbench.bench.stats import jackknife_se, leave_one_out

        n = samples.shape[0]
        out: dict = {}
        f = self.features(samples)
        loo = leave_one_out(n, blocks) if blocks else []
        if n >= self.min_samples:
            out["fid"] = self.fid_of_features(f)
            out["fid_features"] = self.protocol
            if loo and n - n // blocks >= self.min_samples:
                vals = [self.fid_of_features(f[i]) for i in loo]
                out.update(fid_blocks=vals, fid_se=jackknife_se(vals))
        else:
            out["note"] = (f"fid not computed: {n} samples < the protocol's minimum "
                           f"{self.min_samples} ({self.net.num_features}-D features)")
        if self.kid_enabled and n >= 2:
            out.update(self._kid(f, blocks))
        return out

    def kid(self, samples: torch.Tensor, blocks: int | None = None) -> dict:
        """``{"kid", "kid_protocol"[, "kid_se", "kid_blocks"]}`` of ``samples`` (model space)."""
        if not self.kid_enabled:
            raise RuntimeError("DigitsFID(kid=True) computes KID")
        if samples.shape[0] < 2:
            raise UserError("samples", samples.shape[0], hint="KID needs at least 2 samples")
        return self._kid(self.features(samples), blocks)

    def _kid(self, f: torch.Tensor, blocks: int | None) -> dict:
        from samplerbench.bench.stats import jackknife_se

        n = f.shape[0]
        real = self.real_features().double()
        k_xx = self._kernel(f, f)
        k_xx.fill_diagonal_(0.0)
        k_xy = self._kernel(f, real).mean(1)                 # per generated sample

        def mmd(sum_xx: float, sum_xy: float, m: int) -> float:
            return sum_xx / (m * (m - 1)) + self._kyy - 2.0 * sum_xy / m

        out = {"kid": mmd(float(k_xx.sum()), float(k_xy.sum()), n),
               "kid_protocol": self.kid_protocol}
        if blocks and n // blocks * (blocks - 1) >= 2:
            m = n // blocks
            bs = k_xx.reshape(blocks, m, blocks, m).sum((1, 3))     # block-pair sums
            total, rows_ = float(bs.sum()), bs.sum(1)
            xy = k_xy.reshape(blocks, m).sum(1)
            vals = [mmd(total - 2 * float(rows_[k]) + float(bs[k, k]),
                        float(k_xy.sum() - xy[k]), n - m) for k in range(blocks)]
            out.update(kid_blocks=vals, kid_se=jackknife_se(vals))
        return out

    def floor(self, n: int, draws: int = 10, seed: int = 0) -> dict:
        """The same metrics for n real digits drawn with replacement from the reference set (the
        distribution the reference statistics describe): ``{"fid_floor", "fid_floor_sd"[,
        "kid_floor", "kid_floor_sd"]}``, mean and sd over ``draws`` independent draws.  What a
        perfect sampler would score at this sample count."""
        from samplerbench.bench.stats import mean_sd

        real = self.real_features().double()
        g = torch.Generator().manual_seed(seed)
        fids, kids = [], []
        for _ in range(draws):
            f = real[torch.randint(real.shape[0], (n,), generator=g)]
            if n >= self.min_samples:
                fids.append(self.fid_of_features(f))
            if self.kid_enabled and n >= 2:
                kids.append(self._kid(f, None)["kid"])
        out = {}
        if fids:
            out["fid_floor"], out["fid_floor_sd"] = mean_sd(fids)
        if kids:
            out["kid_floor"], out["kid_floor_sd"] = mean_sd(kids)
        return out
