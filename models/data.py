"""Offline training data: 2-D toy distributions and scikit-learn's 8x8 digits.

Every sampler takes an explicit seed (its own ``numpy`` generator, never the global RNG) and returns
float32 tensors.  The toys are scaled to roughly unit standard deviation per coordinate, so that one
noise schedule (``vp-linear``: sigma_max ~ 150; ``rf``: pure noise at t = 1) suits all of them:

  ``moons``         sklearn ``make_moons(noise=0.05)``, centred at (0.5, 0.25) and scaled by 1.5
  ``8gaussians``    8 isotropic Gaussians (std 0.1 before scaling) on a circle of radius 2,
                    divided by sqrt(2) (the FFJORD toy)
  ``checkerboard``  uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (FFJORD's, halved)
  ``swissroll``     sklearn ``make_swiss_roll(noise=0.5)`` coordinates (x, z) divided by 5 (FFJORD)

``digits`` are the 1797 8x8 images shipped with scikit-learn, scaled to [-1, 1]
(:func:`models.gmm.digits_data`), shaped [N, 1, 8, 8], with labels 0..9.  ``digits_split`` holds out
a fixed 10% (a seeded permutation) for validation losses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from samplerbench.models.errors import UserError

Tensor = torch.Tensor


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - np.array([0.5, 0.25])) * 1.5


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = np.arange(8) * (math.pi / 4)
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    k = rng.integers(0, 8, size=n)
    return (centers[k] + 0.1 * rng.standard_normal((n, 2))) / math.sqrt(2.0)


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n)
    x2 = x2 + np.floor(x1) % 2                       # dark squares: (col + row) even
    return np.stack([x1, x2], axis=1)


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]] / 5.0


TOYS = {"moons": _moons, "8gaussians": _eight_gaussians, "checkerboard": _checkerboard,
        "swissroll": _swissroll}
DATASETS = tuple(TOYS) + ("digits",)


def toy_2d(name: str, n: int, seed: int = 0) -> Tensor:
    """``n`` samples [n, 2] (float32) of the 2-D toy ``name``, drawn from ``seed``."""
    if name not in TOYS:
        raise UserError("2-D toy data set", name, sorted(TOYS))
    rng = np.random.default_rng(int(seed))
    return torch.as_tensor(TOYS[name](int(n), rng), dtype=torch.float32)


def digits(dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """All 1797 digits as ([N, 1, 8, 8] in [-1, 1], labels [N] int64)."""
    from samplerbench.models.gmm import digits_data

    x, y = digits_data()
    return x.reshape(-1, 1, 8, 8).to(dtype), y.long()


def digits_split(val_fraction: float = 0.1, seed: int = 0, dtype=torch.float32):
    """A fixed train / validation split: ((x_train, y_train), (x_val, y_val))."""
    x, y = digits(dtype)
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(x)))
    n_val = int(round(val_fraction * len(x)))
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])
