"""Prediction-type conversions, as pure functions of (x, prediction, schedule coefficients).

x_t = alpha x0 + sigma eps.  Prediction types:
  ``x0``        the clean-data estimate (the canonical Denoiser output)
  ``eps``       the noise, eps = (x - alpha x0) / sigma
  ``score``     grad log p_t(x) = -eps / sigma
  ``v``         Salimans & Ho (2022) v = alpha eps - sigma x0 (general alpha, sigma)
  ``velocity``  the PF-ODE / flow-matching velocity dx/dt = alpha' x0 + sigma' eps

Coefficients are tensors already broadcast against x (see :func:`expand_like`).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

PREDICTIONS = ("x0", "eps", "score", "v", "velocity")


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor [B] (or a scalar) to broadcast against x [B, *S]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def eps_from_x0(x, x0, alpha, sigma):
    return (x - alpha * x0) / sigma


def x0_from_eps(x, eps, alpha, sigma):
    return (x - sigma * eps) / alpha


def score_from_eps(eps, sigma):
    return -eps / sigma


def eps_from_score(score, sigma):
    return -sigma * score


def v_from_x0_eps(x0, eps, alpha, sigma):
    return alpha * eps - sigma * x0


def x0_from_v(x, v, alpha, sigma):
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def velocity_from_x0_eps(x0, eps, d_alpha, d_sigma):
    return d_alpha * x0 + d_sigma * eps


def x0_from_velocity(x, u, alpha, sigma, d_alpha, d_sigma):
    # solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; u]
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x - sigma * u) / det


def to_x0(prediction: str, out, x, alpha, sigma, d_alpha=None, d_sigma=None):
    """Convert a network output of type ``prediction`` to the x0 estimate."""
    if prediction == "x0":
        return out
    if prediction == "eps":
        return x0_from_eps(x, out, alpha, sigma)
    if prediction == "score":
        return x0_from_eps(x, eps_from_score(out, sigma), alpha, sigma)
    if prediction == "v":
        return x0_from_v(x, out, alpha, sigma)
    if prediction == "velocity":
        return x0_from_velocity(x, out, alpha, sigma, d_alpha, d_sigma)
    from samplerbench.models.errors import UserError

    raise UserError("prediction", prediction, PREDICTIONS)


def from_x0(prediction: str, x0, x, alpha, sigma, d_alpha=None, d_sigma=None):
    """Express the x0 estimate as a prediction of type ``prediction``."""
    if prediction == "x0":
        return x0
    eps = eps_from_x0(x, x0, alpha, sigma)
    if prediction == "eps":
        return eps
    if prediction == "score":
        return score_from_eps(eps, sigma)
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    if prediction == "velocity":
        return velocity_from_x0_eps(x0, eps, d_alpha, d_sigma)
    from samplerbench.models.errors import UserError

    raise UserError("prediction", prediction, PREDICTIONS)
