"""Classifier-free guidance (Ho & Salimans 2022) as a Denoiser wrapper.

    x0_hat = (1 + w) D(x, t, y) - w D(x, t, null)

The seed convention of the issue, v = (1 + w) v_cond - w v_uncond, is the same thing: at fixed
(x, t) the PF-ODE velocity (and eps_hat, the score, v) is affine in x0_hat, and the weights
(1 + w, -w) sum to 1, so combining in x0 or in velocity gives the same result.  w = 0 is the
conditional model, w = -1 the unconditional one.

Counting: one guided evaluation is 1 NFE (the solver's view) and 2 network forward passes
(``forward_passes_per_call = 2``; the conditional and unconditional halves run as one batched
call).  With w = 0 the unconditional half is skipped and an evaluation is 1 forward pass.

CFG++ (Chung et al. 2024) needs the unconditional half on its own: a caller that passes
``cfg_uncond=True`` (the cond key :data:`UNCOND_KEY`; ``_Dynamics.denoise_pair`` does) gets both
halves, ``cat([x0_guided, x0_uncond])`` along the batch -- one tensor, so the cast / timing /
compile wrappers pass it through untouched.  Both halves always run then (also at w = 0), and the
counting wrapper records 2 forward passes for that 1 NFE.

Labels are per sample.  They come from the ``cond`` dict (``y``, passed through
``dynamics.cond``) or are bound at construction; :func:`class_labels` gives the convention
``label_i = seed_i mod num_classes``, so a sample's label, like its noise, depends on its seed only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from samplerbench.models.denoiser import UNCOND_KEY, Denoiser, DenoiserWrapper  # noqa: F401
from samplerbench.models.errors import UserError

Tensor = torch.Tensor


def check_weight(w, field: str = "guidance") -> float:
    """A classifier-free guidance weight w >= -1 (0 = conditional, -1 = unconditional; CFG++'s
    scale lambda = 1 + w), as a float; anything else is a ``UserError`` naming ``field``."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not -1 <= w < math.inf:
        raise UserError(field, w, hint="classifier-free guidance weights w >= -1 "
                        "(0 = conditional, -1 = unconditional), e.g. 0.0, 1.0, 3.0")
    return float(w)


def provides_uncond(den) -> bool:
    """Whether ``den`` (or a wrapper chain around it) is classifier-free guided, i.e. can return
    the unconditional output separately (``UNCOND_KEY``)."""
    while den is not None:
        if isinstance(den, CFGDenoiser):
            return True
        den = getattr(den, "inner", None)
    return False


def class_labels(seeds: Sequence[int], num_classes: int) -> Tensor:
    """Per-sample class labels from per-sample seeds: ``seed mod num_classes`` (int64 [n])."""
    if isinstance(seeds, range):
        return torch.arange(seeds.start, seeds.stop, seeds.step).remainder_(int(num_classes))
    return torch.as_tensor([int(s) % int(num_classes) for s in seeds], dtype=torch.long)


def conditional_models() -> list[str]:
    """Registered models that take class labels (and so accept guidance)."""
    from samplerbench.models.zoo import model_entries

    return [e.name for e in model_entries() if getattr(e, "num_classes", None)]


class CFGDenoiser(DenoiserWrapper):
    """Classifier-free guidance with weight ``w`` around a class-conditional denoiser.

    ``inner`` must accept ``y`` (labels [B] int64; ``inner.num_classes`` is the null label).
    ``labels`` (optional) are bound per sample; a ``y`` given at call time takes precedence."""

    def __init__(self, inner: Denoiser, w: float, labels: Sequence[int] | Tensor | None = None):
        super().__init__(inner)
        num_classes = getattr(inner, "num_classes", None)
        if not num_classes:
            raise UserError("guidance", w, hint="the model is not class-conditional; guidance "
                            "needs a model with class labels, e.g. digits-cond-rf")
        w = _check_weight(w)
        self.w = w
        self.num_classes = int(num_classes)
        self.forward_passes_per_call = 1 if w == 0.0 else 2
        self.labels = None if labels is None else self._check_labels(labels)

    def _check_labels(self, labels) -> Tensor:
        y = torch.as_tensor(labels).long().reshape(-1)
        if y.numel() == 0 or (y < 0).any() or (y >= self.num_classes).any():
            raise UserError("class labels", y.tolist()[:10],
                            hint=f"integers in 0..{self.num_classes - 1}, one per sample")
        return y

    def forward(self, x, t, y=None, cfg_uncond=False, **cond):
        B = x.shape[0]
        y = self.labels if y is None else self._check_labels(y)
        if y is None:
            raise UserError("class labels", None, hint="classifier-free guidance needs labels: "
                            "pass y in the cond dict or bind them with guided(..., labels=...)")
        if y.numel() == 1:
            y = y.expand(B)
        if y.numel() != B:
            raise UserError("class labels", f"{y.numel()} labels",
                            hint=f"one label per sample: the batch has {B}")
        y = y.to(x.device)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(B)
        if self.w == 0.0 and not cfg_uncond:
            return self.inner(x, t, y=y, **cond)
        null = torch.full_like(y, self.num_classes)
        both = self.inner(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]),
                          **{k: _twice(v) for k, v in cond.items()})
        x0_c, x0_u = both[:B], both[B:]
        guided = x0_c if self.w == 0.0 else x0_c + self.w * (x0_c - x0_u)
        return torch.cat([guided, x0_u]) if cfg_uncond else guided


def _twice(v):
    return torch.cat([v, v]) if isinstance(v, Tensor) and v.ndim > 0 else v


def _check_weight(w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise UserError("guidance", w, hint="a finite number w (0 = conditional, no guidance)")
    return float(w)


def guided(model: str | Denoiser, w: float, labels: Sequence[int] | Tensor | None = None
           ) -> CFGDenoiser:
    """The model ``model`` (a registered name / spec, or a Denoiser) under classifier-free guidance
    with weight ``w`` and per-sample ``labels`` (see :func:`class_labels`).

    A model without class labels raises ``UserError`` naming the conditional models."""
    if isinstance(model, str):
        from samplerbench.models.zoo import load_model

        den = load_model(model)
        if not getattr(den, "num_classes", None):
            raise UserError("guidance", w, hint=f"model {model!r} is not class-conditional; "
                            f"conditional models: {', '.join(conditional_models()) or 'none'}")
    else:
        den = model
    return CFGDenoiser(den, w, labels)
