"""Quality metrics of a cell's samples, each with its seed-block uncertainty and its floor.

What is measured depends on what the model knows about its data:

- an analytic Gaussian mixture: the Frechet distance of the samples' Gaussian fit to the exact
  moments (``fid``, ``fid_features = "data:exact-moments"``) and the sliced Wasserstein distance
  to 4096+ exact samples (``swd``);
- a model of the digits: FID (and KID) with the shipped digits feature network
  (:class:`samplerbench.bench.fid.DigitsFID`);
- a model of a 2-D toy: the Frechet distance to the data moments and ``swd`` to 10,000 data
  samples;
- a model that memorises its training set (the empirical denoiser ``digits-ideal``): besides the
  above, how many samples reached a training image (``train_reached``, within RMS
  ``REACHED_RMS``) and how many distinct images they reached (``train_distinct``) -- its FID
  only measures which training images were drawn, so reports do not rank it by FID.

Every metric ``m`` comes with ``m_se`` and ``m_blocks`` (the delete-one-block jackknife of
:mod:`samplerbench.bench.stats`, ``blocks`` seed blocks) and ``m_floor`` / ``m_floor_sd``: the
same metric for exact samples from the data distribution at the same sample count (mean and sd
over ``FLOOR_DRAWS`` independent draws) -- the value a perfect sampler would get.  Rows also get
``x_fingerprint`` and ``x_rms`` (alias detection) whatever the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from samplerbench.bench import stats
from samplerbench.bench.metrics import frechet_gaussian, frechet_gaussian_op, swd

REACHED_RMS = 0.02           # a sample within this RMS of a training image has reached it
BLOWUP_FACTOR = 10.0         # a sample with RMS > this x (data RMS + sigma(t_end)) blew up
EXACT_SEED = 12345           # exact / data reference samples (swd)
DENSE_COV_MAX_DIM = 2048      # above: a diagonal mixture's Frechet distance uses its covariance operator


class QualityMetrics:
    """Per-run state (reference samples, feature network, floors) and ``__call__(den, x,
    blocks) -> dict`` of row fields."""

    def __init__(self, cache_dir: Path | None = None, kid: bool = False,
                 fid_features: str = "auto"):
        self.cache_dir = cache_dir
        self.kid = kid
        self.fid_features = fid_features
        self._refs: dict = {}
        self._floors: dict = {}
        self._fid = None

    # ------------------------------------------------------------------------------------------
    def digits_fid(self, n: int):
        if self._fid is None:
            from samplerbench.bench.fid import DigitsFID

            self._fid = DigitsFID(cache_dir=self.cache_dir, kid=self.kid,
                                  features=self.fid_features)
        return self._fid

    def _exact(self, mixture, n: int) -> torch.Tensor:
        n_exact = max(4096, 4 * n)
        key = ("exact", id(mixture), n_exact)
        if key not in self._refs:                         # drawn once per model
            self._refs[key] = mixture.sample(n_exact, torch.Generator().manual_seed(EXACT_SEED))
        return self._refs[key]

    def _toy(self, dataset: str) -> torch.Tensor:
        from samplerbench.models.data import toy_2d

        key = ("data", dataset)
        if key not in self._refs:
            self._refs[key] = toy_2d(dataset, 10_000, seed=EXACT_SEED).reshape(10_000, -1).double()
        return self._refs[key]

    def _moment_metrics(self, flat: torch.Tensor, mean, cov, ref, blocks, draw) -> dict:
        """Frechet distance to (mean, cov) and swd to ``ref``, jackknifed, with floors from
        ``draw(k, n)`` (exact samples, draw k).  ``cov``: a d x d matrix, or a mixture (its
        ``cov_times`` operator: no d x d matrix in high dimension)."""
        out = {}
        if isinstance(cov, torch.Tensor):
            def fdist(x):
                return frechet_gaussian(x, mean, cov)
        else:
            trace = cov.trace_covariance()

            def fdist(x):
                return frechet_gaussian_op(x, mean, cov.cov_times, trace)
        fd = stats.jackknife(fdist, flat, blocks)
        sw = stats.jackknife(lambda x: swd(x, ref), flat, blocks)
        out.update(fid=fd["value"], fid_se=fd["se"], fid_blocks=fd["blocks"],
                   swd=sw["value"], swd_se=sw["se"], swd_blocks=sw["blocks"])
        n = flat.shape[0]
        key = ("floor", id(ref), n)
        if key not in self._floors:
            fds, sws = [], []
            for k in range(stats.FLOOR_DRAWS):
                y = draw(k, n).reshape(n, -1).double()
                fds.append(fdist(y))
                sws.append(swd(y, ref))
            f_m, f_sd = stats.mean_sd(fds)
            s_m, s_sd = stats.mean_sd(sws)
            self._floors[key] = {"fid_floor": f_m, "fid_floor_sd": f_sd,
                                 "swd_floor": s_m, "swd_floor_sd": s_sd}
        out.update(self._floors[key])
        return out

    def data_rms(self, den) -> float:
        """RMS of the model's data per dimension: exact for a mixture, from the training data for
        a dataset model or an empirical denoiser, 1.0 (normalised data) for any other model and
        for a latent model (its state is a latent scaled to unit variance)."""
        key = ("rms", id(den))
        if key not in self._refs:
            mixture = getattr(den, "mixture", None)
            dataset = getattr(den, "dataset", None)
            if mixture is not None:
                d = mixture.dim              # tr(cov) in O(K d): no d x d matrix
                v = float((mixture.mean().double().pow(2).sum()
                           + mixture.trace_covariance()) / d) ** 0.5
            elif getattr(den, "data", None) is not None:
                v = float(den.data.double().pow(2).mean().sqrt())
            elif getattr(den, "decoder", None) is not None:
                v = 1.0
            elif dataset == "digits":
                from samplerbench.bench.fid import _digits01

                v = float((_digits01()[0].double() * 2 - 1).pow(2).mean().sqrt())
            elif dataset is not None:
                v = float(self._toy(dataset).pow(2).mean().sqrt())
            else:
                v = 1.0
            self._refs[key] = v
        return self._refs[key]

    def blowup(self, den, x: torch.Tensor, sigma_end: float) -> str | None:
        """Why the finite result ``x`` is no sample of the model -- some samples' RMS is above
        ``BLOWUP_FACTOR`` x (data RMS + sigma at the grid's end) -- or None.  A solve that
        blows up without overflowing (e.g. an unstable method on a stiff reverse SDE) is
        recorded ``diverged`` with this message instead of entering tables as a measurement."""
        scale = self.data_rms(den) + float(sigma_end)
        rms = x.detach().double().reshape(x.shape[0], -1).pow(2).mean(1).sqrt()
        bad = rms > BLOWUP_FACTOR * scale
        if not bool(bad.any()):
            return None
        return (f"blew up: {int(bad.sum())} of {x.shape[0]} samples have RMS above "
                f"{BLOWUP_FACTOR:g} x the data scale {scale:.3g} (data RMS + sigma(t_end)); "
                f"largest {float(rms.max()):.3g}")

    # ------------------------------------------------------------------------------------------
    def __call__(self, den, x: torch.Tensor, blocks: int | None,
                 images: torch.Tensor | None = None) -> dict:
        """Row fields for the samples ``x`` of model ``den`` (the model itself, not a wrapper:
        its ``mixture`` / ``dataset`` say what to measure).  For a latent model ``images`` are
        the decoded samples (:mod:`samplerbench.bench.decode`): the distributional metrics use
        them, ``x_fingerprint`` / ``x_rms`` stay on the state ``x``."""
        per_sample = x.detach().double().reshape(x.shape[0], -1).pow(2).mean(1).sqrt()
        out: dict = {"x_fingerprint": stats.fingerprint(x),
                     "x_rms": float(per_sample.pow(2).mean().sqrt()),
                     "x_rms_max": float(per_sample.max())}
        if images is not None:
            x = images
        mixture = getattr(den, "mixture", None)
        dataset = getattr(den, "dataset", None)
        flat = x.reshape(x.shape[0], -1).double()
        if mixture is not None:
            ref = self._exact(mixture, x.shape[0])
            # a diagonal mixture in high dimension: its covariance as an operator (O(K d))
            big = mixture.diagonal and mixture.dim > DENSE_COV_MAX_DIM
            out.update(self._moment_metrics(
                flat, mixture.mean(), mixture if big else mixture.covariance(), ref, blocks,
                lambda k, n: mixture.sample(n, torch.Generator().manual_seed(1000 + k))))
            out["fid_features"] = "data:exact-moments"
        elif dataset == "digits":
            n = x.shape[0]
            fid = self.digits_fid(n)
            out.update(fid.score(x, blocks))
            key = ("digits-floor", n)
            if key not in self._floors:
                self._floors[key] = fid.floor(n, draws=stats.FLOOR_DRAWS)
            out.update(self._floors[key])
        elif dataset is not None:
            from samplerbench.models.data import toy_2d

            ref = self._toy(dataset)
            out.update(self._moment_metrics(
                flat, ref.mean(0), torch.cov(ref.T), ref, blocks,
                lambda k, n: toy_2d(dataset, n, seed=1000 + k)))
            out["fid_features"] = f"data:{dataset}-moments"
        nearest = getattr(den, "nearest", None)
        if nearest is not None:                            # a memorising (empirical) denoiser
            idx, dist = nearest(x.double())
            hit = dist <= REACHED_RMS
            out["train_reached"] = float(hit.double().mean())
            out["train_distinct"] = int(torch.unique(idx[hit]).numel())
        return out
