"""Decoding a latent model's samples for the metrics that look at data.

The solve, the reference solution, ``err_rms`` / ``err_max``, the fitted order, ``nonconv`` and
the blow-up check are all computed on the ODE state (for a latent model: the latent).  Quality
metrics (FID / KID / Frechet / swd, memorisation) are computed on ``denoiser.decode(x)``: each
sample is decoded once, after the solve and outside its timing, in batches of ``DECODE_BATCH``.
Rows record the decoding time in ``decode_s`` (seconds for all samples, CUDA-synchronised; null
for a model without a decoder) and the space the quality metrics were computed in,
``metric_space``: ``"decoded"`` or ``"state"`` (null where no quality metric was computed).
The sample statistics ``x_fingerprint`` / ``x_rms`` (alias detection) stay on the state.
"""

from __future__ import annotations

from time import perf_counter

import torch

DECODE_BATCH = 64            # samples per decoder call


def has_decoder(den) -> bool:
    return getattr(den, "decoder", None) is not None


def decode_samples(den, x: torch.Tensor, device: torch.device | str | None = None,
                   batch: int | None = None) -> tuple[torch.Tensor | None, float | None]:
    """(images on the CPU, seconds) for the states ``x`` [n, *data_shape] of ``den`` (the model
    itself or any wrapper of it), decoded on ``device`` (default: x's) in batches of ``batch``
    (default :data:`DECODE_BATCH`); (None, None) for a model without a decoder."""
    if not has_decoder(den):
        return None, None
    batch = int(batch or DECODE_BATCH)
    device = torch.device(device) if device is not None else x.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = perf_counter()
    parts = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            parts.append(den.decode(x[i:i + batch].to(device)).detach())
    if cuda:
        torch.cuda.synchronize(device)
    seconds = perf_counter() - t0
    return torch.cat(parts).cpu(), seconds
