"""Small networks for the trained zoo, and the loader for their shipped checkpoints.

``net(x, t, y=None) -> prediction`` with x [B, *data_shape], t [B] the schedule time in [0, 1] and
y [B] optional class labels (``num_classes`` is the null label used by classifier-free guidance).

  ``mlp``    2-D data: an MLP with a sinusoidal time embedding added to every hidden layer
  ``unet``   8x8 images: a two-level convolutional U-Net (8x8 -> 4x4 -> 2x2) with residual blocks,
             the time (and class) embedding added per channel in every block (Ho et al. 2020, small);
             on a 4x4 latent the same U-Net with fewer levels
  ``ae``     the digits autoencoder of the latent models (not a denoiser): ``encode(x)`` ->
             (mean, log-variance) of a diagonal Gaussian posterior over a ``latent_channels`` x 4 x 4
             latent, ``decode(z)`` -> 8x8 images in [-1, 1] (Rombach et al. 2022's KL-regularised
             autoencoder, small)

Checkpoints (``models/checkpoints/NAME.safetensors`` + ``NAME.json``, the model card) are loaded
with safetensors only; the card holds the architecture config, schedule and prediction type.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from samplerbench.models.errors import UserError

Tensor = torch.Tensor
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0,
                         max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of ``scale * t`` (DDPM's timestep embedding), [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device)
                      / half)
    arg = (scale * t)[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class Embedding(nn.Module):
    """Time embedding (sinusoidal -> MLP), plus a class embedding with a null class if
    ``num_classes`` is set (label ``num_classes`` = unconditional)."""

    def __init__(self, dim: int, num_classes: int | None = None):
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        e = self.mlp(sinusoidal_embedding(t, self.dim))
        if self.classes is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            e = e + self.classes(y.long())
        return e


class MLP(nn.Module):
    """MLP for 2-D data: in -> ``depth`` residual SiLU layers of width ``hidden`` -> out."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        self.embed = Embedding(emb, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.emb_proj = nn.ModuleList(nn.Linear(emb, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, y=None):
        e = self.embed(t, y)
        h = self.inp(x)
        for lin, proj in zip(self.layers, self.emb_proj):
            h = h + lin(nn.functional.silu(h + proj(e)))
        return self.out(nn.functional.silu(h))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int = 8):
        super().__init__()
        self.n1 = nn.GroupNorm(groups, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2 = nn.GroupNorm(groups, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)

    def forward(self, x, e):
        h = self.c1(nn.functional.silu(self.n1(x)))
        h = h + self.e(e)[:, :, None, None]
        h = self.c2(nn.functional.silu(self.n2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """U-Net for small square images: levels of ``channels`` (each halves the resolution), one
    residual block per level on the way down and up, one in the middle."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 64),
                 emb: int = 128, num_classes: int | None = None):
        super().__init__()
        channels = tuple(channels)
        self.embed = Embedding(emb, num_classes)
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(c, ch, emb))
            c = ch
            if i < len(channels) - 1:
                self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c, c, emb)
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            self.up.append(ResBlock(c + ch, ch, emb))
            c = ch
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, y=None):
        e = self.embed(t, y)
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, e)
        for block in self.up:
            s = skips.pop()
            if h.shape[-1] != s.shape[-1]:
                h = nn.functional.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), e)
        return self.out(nn.functional.silu(self.out_norm(h)))


class DigitsAutoencoder(nn.Module):
    """KL-regularised convolutional autoencoder for 1 x 8 x 8 images: an encoder to the mean and
    log-variance of q(z | x) over ``latent_channels`` x 4 x 4 latents, a decoder back to 8 x 8
    images in [-1, 1] (tanh).  The latent models sample z in the *scaled* latent space
    ``(z - shift_factor) * scaling_factor`` (the SD3 / Flux convention; the factors are in the
    model card), and decode with ``decode(z / scaling_factor + shift_factor)``."""

    def __init__(self, in_channels: int = 1, latent_channels: int = 2, hidden: int = 64):
        super().__init__()
        self.latent_channels = int(latent_channels)
        act = nn.SiLU
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), act(),        # 8x8 -> 4x4
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, 2 * latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Upsample(scale_factor=2, mode="nearest"),                      # 4x4 -> 8x8
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, hidden, 3, padding=1), act(),
            nn.Conv2d(hidden, in_channels, 3, padding=1), nn.Tanh())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of q(z | x), each [B, latent_channels, 4, 4]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x)[0])


NETS = {"mlp": MLP, "unet": UNet, "ae": DigitsAutoencoder}


def build_net(config: dict) -> nn.Module:
    """``{"arch": "mlp" | "unet", **kwargs}`` -> an (untrained) network."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch not in NETS:
        raise UserError("network arch", arch, sorted(NETS))
    return NETS[arch](**config)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class DtypeCopies(nn.Module):
    """Holds a network (or any callable) and hands out a converted copy for the dtype and device of
    the input, cached per (dtype, device), in eval mode without gradients.  Float64 sampling then
    integrates a float64 right-hand side, as the tight-tolerance reference solver needs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        if isinstance(net, nn.Module):
            net.eval().requires_grad_(False)
        self._copies: dict = {}

    def module(self, dtype, device):
        net = self.net
        if not isinstance(net, nn.Module):
            return net
        p = next(iter(net.parameters()), None)
        if p is None or (p.dtype == dtype and p.device == torch.device(device)):
            return net
        key = (dtype, str(device))
        if key not in self._copies:
            import copy

            with quiet_diffusers():
                self._copies[key] = copy.deepcopy(net).to(dtype=dtype, device=device)
        return self._copies[key]


class quiet_diffusers:
    """Silence diffusers' advice-level log messages (accelerate, dtype casts) in a block."""

    def __enter__(self):
        import sys

        mod = sys.modules.get("diffusers")
        self.log = getattr(mod, "logging", None) if mod else None
        if self.log is not None:
            self.level = self.log.get_verbosity()
            self.log.set_verbosity_error()

    def __exit__(self, *exc):
        if self.log is not None:
            self.log.set_verbosity(self.level)


class DtypeNet(DtypeCopies):
    """``net(x, t, **cond)`` run in the input's dtype and on its device, without autograd."""

    def forward(self, x, t, **cond):
        with torch.no_grad():
            return self.module(x.dtype, x.device)(x, t.to(x.dtype), **cond)


def read_card(name: str, directory: str | Path | None = None) -> dict:
    path = Path(directory or CHECKPOINT_DIR) / f"{name}.json"
    if not path.exists():
        raise UserError("checkpoint", str(path), hint="no model card; run `samplerbench train "
                        f"{name}` to create it")
    return json.loads(path.read_text())


def load_checkpoint(name: str, directory: str | Path | None = None):
    """The shipped checkpoint ``name`` as a :class:`models.denoiser.PredictionDenoiser`."""
    from safetensors.torch import load_file

    from samplerbench.models.denoiser import PredictionDenoiser
    from samplerbench.models.schedules import make_schedule

    card = read_card(name, directory)
    if "decoder" in card:       # a latent model: check its decoder before loading anything else
        decoder = load_latent_decoder(card, directory)
    net = build_net(card["net"])
    weights = Path(directory or CHECKPOINT_DIR) / card["weights"]
    net.load_state_dict(load_file(str(weights)))
    den = PredictionDenoiser(DtypeNet(net), make_schedule(card["schedule"]), card["prediction"],
                             tuple(card["data_shape"]))
    den.num_classes = card["net"].get("num_classes")
    den.card = card
    if "decoder" in card:
        den.decoder = decoder
    return den


def load_autoencoder(name: str, directory: str | Path | None = None):
    """The shipped autoencoder ``name`` (an ``ae`` card) and its card: (module, card)."""
    from safetensors.torch import load_file

    card = read_card(name, directory)
    if card.get("net", {}).get("arch") != "ae":
        raise UserError("decoder", name, hint="its model card is not an autoencoder's "
                        "(net.arch must be 'ae')")
    weights = Path(directory or CHECKPOINT_DIR) / card["weights"]
    if not weights.is_file():
        raise UserError("decoder weights", str(weights), hint=f"the file is missing; run "
                        f"`samplerbench train {name}` to recreate it")
    ae = build_net(card["net"])
    ae.load_state_dict(load_file(str(weights)))
    return ae.eval().requires_grad_(False), card


def load_latent_decoder(card: dict, directory: str | Path | None = None):
    """The :class:`~samplerbench.models.decoders.VAEDecoder` of the latent model ``card``: its
    ``decoder`` autoencoder, with the card's ``scaling_factor`` / ``shift_factor``.  A missing
    decoder, a decoder whose latent shape is not the denoiser's ``data_shape`` or whose weights
    are not the ones the model was trained on (sha256) is refused (exit 2, the mismatch named)."""
    from samplerbench.models.decoders import VAEDecoder

    name = card["decoder"]
    ae_dir = Path(directory or CHECKPOINT_DIR)
    if not (ae_dir / f"{name}.json").is_file():
        raise UserError("decoder", name, hint=f"model {card.get('name')!r} decodes with "
                        f"{name!r}, but {ae_dir / (name + '.json')} is missing; run "
                        f"`samplerbench train {name}`")
    ae, ae_card = load_autoencoder(name, directory)
    latent = tuple(ae_card["latent_shape"])
    if tuple(card["data_shape"]) != latent:
        raise UserError("decoder latent shape", list(latent), hint=f"model {card.get('name')!r} "
                        f"has data_shape {list(card['data_shape'])} but its decoder {name!r} "
                        f"takes latents of shape {list(latent)}")
    want = card.get("decoder_sha256")
    if want is not None and want != ae_card.get("weights_sha256"):
        raise UserError("decoder weights", name, hint=f"model {card.get('name')!r} was trained "
                        f"on the latents of {name!r} sha256 {want[:12]}..., the card here says "
                        f"{str(ae_card.get('weights_sha256'))[:12]}...; retrain one of them")
    return VAEDecoder(ae, scaling_factor=ae_card["scaling_factor"],
                      shift_factor=ae_card["shift_factor"], dtype=torch.float32,
                      latent_shape=latent, data_shape=tuple(ae_card["data_shape"]))


def broadcast_cond(cond: dict, B: int, device, dtype) -> dict:
    """Extra network inputs in the input's device (floating ones in its dtype); a batch
    dimension of 1 is broadcast to ``B``."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Tensor):
            if v.is_floating_point():
                v = v.to(device=device, dtype=dtype)
            else:
                v = v.to(device=device)
            if v.ndim > 0 and v.shape[0] == 1 and B != 1:
                v = v.expand((B,) + tuple(v.shape[1:]))
        out[k] = v
    return out
