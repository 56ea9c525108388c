"""Decoders of latent models: the ODE state (a latent) -> data (images).

A latent model is a :class:`~samplerbench.models.denoiser.Denoiser` whose ``decoder`` is set.
Solvers, the error / order / non-convergence metrics and the blow-up check all work on the state;
only what looks at the data -- quality metrics (FID, KID, Frechet, swd), ``samplerbench sample``'s
``images``, previews -- decodes it, once per sample after the solve
(:func:`samplerbench.bench.decode.decode_samples`).  A decoder is any callable ``z -> images``
with a ``data_shape`` attribute (the shape of one decoded sample); :class:`VAEDecoder` is the one
for a Stable-Diffusion-style VAE.
"""

from __future__ import annotations

import torch
from torch import nn

from samplerbench.models.nets import DtypeCopies

Tensor = torch.Tensor


class VAEDecoder(nn.Module):
    """``vae.decode(z / scaling_factor + shift_factor).sample`` (the diffusers convention:
    pipelines multiply the VAE's latent by ``scaling_factor`` after subtracting ``shift_factor``,
    so the denoiser's state has roughly unit variance; SD / SDXL have no shift, SD3 / Flux do).

    The VAE runs in ``dtype`` (default: the dtype of its weights) on the device of ``z``,
    whatever the dtype of the solver state; the images come back in ``dtype``.  ``data_shape``
    is one image's shape, ``latent_shape`` one latent's."""

    def __init__(self, vae: nn.Module, scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 dtype: torch.dtype | None = None, latent_shape: tuple[int, ...] = (),
                 data_shape: tuple[int, ...] = ()):
        super().__init__()
        self.conv = DtypeCopies(vae)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        p = next(iter(vae.parameters()), None)
        self.dtype = dtype or (p.dtype if p is not None else torch.float32)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.data_shape = tuple(int(s) for s in data_shape)

    def forward(self, z: Tensor) -> Tensor:
        vae = self.conv.module(self.dtype, z.device)
        with torch.no_grad():
            out = vae.decode(z.to(self.dtype) / self.scaling_factor + self.shift_factor)
        return getattr(out, "sample", out)

    def extra_repr(self) -> str:
        return (f"scaling_factor={self.scaling_factor:g}, shift_factor={self.shift_factor:g}, "
                f"dtype={self.dtype}, latent_shape={self.latent_shape}, "
                f"data_shape={self.data_shape}")
