"""Small stand-ins for a user's own models, so that every model-spec form that
``samplerbench list models`` shows has an example that runs as printed.

* ``edm:samplerbench.models.examples:gaussian_edm`` and ``flow:...:gaussian_flow``: the exact
  denoiser / velocity of 2-D Gaussian data N(0, 0.5^2 I), written as a user would write a network
  (an EDM D(x, sigma) and a flow_matching velocity u(x, s) with s = 0 at noise).
* ``python -m samplerbench.models.examples gmm|edm-pkl|ddpm PATH`` writes a ``gmm:`` JSON, an
  NVlabs-layout EDM network pickle (a tiny EDMPrecond-like network; see
  :mod:`samplerbench.models.edm_pickle`) or a tiny random diffusers DDPM pipeline folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

DATA_STD = 0.5


class GaussianEDM(nn.Module):
    """D(x, sigma) = E[x0 | x0 + sigma n] = x s^2 / (s^2 + sigma^2) for x0 ~ N(0, s^2 I)."""

    data_shape = (2,)
    sigma_min, sigma_max = 0.002, 80.0

    def forward(self, x, sigma, **cond):
        s2 = DATA_STD ** 2
        return x * (s2 / (s2 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2))


class GaussianFlow(nn.Module):
    """flow_matching convention: x_s = s x1 + (1 - s) x0, x0 ~ N(0, I) noise, x1 ~ N(0, s_d^2 I);
    u(x, s) = E[x1 - x0 | x_s = x] = x (s s_d^2 - (1 - s)) / (s^2 s_d^2 + (1 - s)^2)."""

    data_shape = (2,)

    def forward(self, x, t, **cond):
        s = t.reshape(-1, *([1] * (x.dim() - 1)))
        s2 = DATA_STD ** 2
        return x * (s * s2 - (1 - s)) / (s ** 2 * s2 + (1 - s) ** 2)


def gaussian_edm() -> nn.Module:
    return GaussianEDM()


def gaussian_flow() -> nn.Module:
    return GaussianFlow()


# the module source an NVlabs EDM pickle would carry (cf. NVlabs/edm training/networks.py): a
# preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022,
# Table 1) around a per-pixel MLP with a noise embedding
TINY_EDM_SRC = '''
import numpy as np
import torch
from torch_utils import persistence


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, channels, label_dim=0, hidden=16):
        super().__init__()
        self.inp = torch.nn.Conv2d(channels, hidden, 1)
        self.emb = torch.nn.Linear(1 + label_dim, hidden)
        self.out = torch.nn.Conv2d(hidden, channels, 1)

    def forward(self, x, noise_labels, class_labels=None):
        emb = noise_labels.reshape(-1, 1)
        if class_labels is not None:
            emb = torch.cat([emb, class_labels], dim=1)
        h = torch.nn.functional.silu(self.inp(x) + self.emb(emb)[:, :, None, None])
        return self.out(h)


@persistence.persistent_class
class TinyEDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0,
                 sigma_max=float('inf'), sigma_data=0.5):
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.label_dim, self.sigma_data = label_dim, sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.model = TinyNet(img_channels, label_dim)

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim and class_labels is None:
            class_labels = torch.zeros([x.shape[0], self.label_dim], device=x.device)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise.flatten(), class_labels)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)
'''


def write_edm_pickle(path, resolution: int = 4, channels: int = 1, seed: int = 0):
    """An NVlabs-layout EDM network pickle ``{"ema": TinyEDMPrecond, "loss_fn": None,
    "augment_pipe": None, "dataset_kwargs": {...}}``; returns the pickled network."""
    from samplerbench.models.edm_pickle import dump_network

    torch.manual_seed(seed)
    return dump_network(path, TINY_EDM_SRC, "TinyEDMPrecond", resolution, channels,
                        extra={"loss_fn": None, "augment_pipe": None,
                               "dataset_kwargs": {"class_name": "example", "resolution":
                                                  resolution}})


def write_gmm(path) -> dict:
    """A 2-D three-component mixture on the EDM schedule as a ``gmm:`` JSON file."""
    doc = {"weights": [0.5, 0.3, 0.2], "means": [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]],
           "stds": [0.3, 0.2, 0.4], "schedule": "edm"}
    Path(path).write_text(json.dumps(doc, indent=1))
    return doc


def write_ddpm(path, seed: int = 0) -> None:
    """A tiny random diffusers DDPMPipeline (8x8, 1 channel, epsilon prediction) saved as
    safetensors."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(path),
                                                                       safe_serialization=True)


WRITERS = {"gmm": write_gmm, "edm-pkl": write_edm_pickle, "ddpm": write_ddpm}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 2 or args[0] not in WRITERS:
        sys.stderr.write(f"usage: python -m samplerbench.models.examples "
                         f"{{{','.join(WRITERS)}}} PATH\n")
        return 2
    WRITERS[args[0]](args[1])
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
