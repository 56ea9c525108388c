"""The diffusers family of adapters: ``diffusers:PATH`` (a local folder, never a hub).

``diffusers:PATH``
    A diffusers folder: a pipeline (``model_index.json`` with ``unet/`` or ``transformer/`` and
    ``scheduler/``, e.g. a saved ``DDPMPipeline``) or a model folder (``config.json``) with its
    ``scheduler_config.json`` beside it or in ``../scheduler/``.  The scheduler config decides:

    * DDPM-family schedulers (DDPM, DDIM, PNDM, Euler, DPMSolver..., any with ``alphas_cumprod``):
      the network predicts ``epsilon``, ``sample`` (x0) or ``v_prediction``
      (v = sqrt(abar) eps - sqrt(1 - abar) x0) at integer timesteps k = 0..N-1.  The discrete
      table abar_k becomes the continuous :class:`DiscreteVPSchedule`: timestep k sits at
      t_k = (k + 1) / N, the log-SNR lambda = log(abar / (1 - abar)) is interpolated linearly in t
      between the t_k (and below t_0 the ratio sigma/alpha falls linearly to 0 at t = 0), and the
      network is called at the fractional timestep k(t) = N t - 1.  On the grid points t_k the
      schedule is exactly the scheduler's (alpha^2 = abar_k), so our ``ddim`` on the timesteps of
      diffusers' ``DDIMScheduler`` is diffusers' DDIM loop.  Sampling runs on [t_0, 1].
    * ``FlowMatchEulerDiscreteScheduler``: a rectified-flow velocity model,
      x_s = (1 - s) x0 + s eps, output eps - x0 at timestep s * N (SD3 / Flux convention)
      -> our ``rf`` schedule with t = s, ``velocity`` prediction.  The config's ``shift`` only
      reshapes the time grid: it is kept as ``denoiser.shift`` and
      ``denoiser.recommended_grid = ("shift", {"shift": shift})``.

    A network whose output has twice the input channels (learned variance) is cut to its first
    half.  ``clip_sample`` / thresholding of the scheduler are not applied (they are not part of
    the ODE).  Extra network inputs (e.g. text embeddings ``encoder_hidden_states``,
    ``pooled_projections``) are passed in the cond dict, or stored once in ``PATH/cond.safetensors``
    (batch dimension 1 is broadcast).  A class label ``y`` goes to ``class_labels``.

    **Latent models.**  A folder with a ``vae/`` subfolder (a diffusers ``AutoencoderKL``, as in
    Stable Diffusion, SDXL, SD3 pipelines) is a latent model: the ODE state is the *scaled*
    latent the denoiser works on, and ``denoiser.decoder`` (a :class:`VAEDecoder`) maps it to
    images with ``vae.decode(z / scaling_factor + shift_factor).sample``, both factors from the
    VAE config (``shift_factor`` 0 when absent, as SD / SDXL; SD3 / Flux VAEs set it), in the dtype
    the VAE is loaded in (float32), whatever the solver state's dtype.  The VAE must fit the
    denoiser: ``latent_channels`` equal to the state's channels and, where the VAE config has a
    ``sample_size``, ``sample_size / 2^(len(block_out_channels) - 1)`` equal to the state's spatial
    size; a missing or broken ``vae/`` (no config, no weights, a code-carrying pickle) or a
    mismatch is refused at load with ``UserError``.  Solvers and the error / order / non-convergence
    metrics never see the decoder; quality metrics and previews use the decoded images.

Safety: weights are read with safetensors or ``torch.load(weights_only=True)``
(:func:`samplerbench.models.weights.load_weights`); the file diffusers will load is checked
before ``from_pretrained`` sees it (:func:`_check_folder_weights`).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from samplerbench.models.decoders import VAEDecoder
from samplerbench.models.denoiser import Denoiser, PredictionDenoiser
from samplerbench.models.errors import UserError
from samplerbench.models.nets import DtypeCopies, broadcast_cond, quiet_diffusers
from samplerbench.models.schedules import Schedule, _as_tensor, make_schedule
from samplerbench.models.weights import load_weights, read_json

Tensor = torch.Tensor

WEIGHTS_NAME = "diffusion_pytorch_model"     # what diffusers' from_pretrained loads (no variant)


def _check_folder_weights(folder: Path) -> bool:
    """Check the weights diffusers will load from ``folder``; True if they are safetensors.

    ``from_pretrained`` reads ``diffusion_pytorch_model.safetensors`` (or its sharded index)
    when present, else the pickled ``diffusion_pytorch_model.bin`` (or its shards): other files
    in the folder say nothing about what is loaded.  The pickle is opened here with
    ``weights_only=True`` first, so one that would run code is refused before diffusers sees it;
    the caller then loads with ``use_safetensors`` set to the answer, so diffusers cannot fall
    back to a file that was not checked."""
    for index in (f"{WEIGHTS_NAME}.safetensors", f"{WEIGHTS_NAME}.safetensors.index.json"):
        if (folder / index).is_file():
            return True
    files = []
    if (folder / f"{WEIGHTS_NAME}.bin").is_file():
        files = [folder / f"{WEIGHTS_NAME}.bin"]
    elif (folder / f"{WEIGHTS_NAME}.bin.index.json").is_file():
        index = read_json(folder / f"{WEIGHTS_NAME}.bin.index.json", "weights index")
        shards = index.get("weight_map", {}) if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not all(isinstance(v, str) for v in shards.values()):
            raise UserError("weights index", str(folder / f"{WEIGHTS_NAME}.bin.index.json"),
                            hint="expected a 'weight_map' object of file names")
        files = [folder / name for name in sorted(set(shards.values()))]
        for f in files:
            if f.parent.resolve() != folder.resolve():
                raise UserError("weights index shard", str(f), hint="shards must lie in the "
                                "model folder")
    if not files:
        raise UserError("diffusers weights", str(folder), hint=f"no {WEIGHTS_NAME}.safetensors "
                        f"(or {WEIGHTS_NAME}.bin) in the model folder")
    for f in files:
        load_weights(f)                 # refuses a pickle that would import or run code
    return False



# ----------------------------------------------------------------------------------------------
# discrete VP schedules (diffusers' alphas_cumprod)
# ----------------------------------------------------------------------------------------------

class DiscreteVPSchedule(Schedule):
    """A continuous VP schedule through a discrete table abar_k, k = 0..N-1 (decreasing).

    Timestep k sits at t_k = (k + 1) / N.  The log-SNR lambda_k = log(abar_k / (1 - abar_k)) is
    interpolated linearly in t on [t_0, 1] (so d lambda / dt is piecewise constant); below t_0 the
    ratio sigma/alpha = ratio_0 * t / t_0 goes to 0 at t = 0.  alpha^2 = sigmoid(lambda),
    sigma^2 = sigmoid(-lambda).  ``t_min`` = t_0, ``t_max`` = 1."""

    name = "discrete-vp"

    def __init__(self, alphas_cumprod):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        if ac.numel() < 2 or not ((ac > 0) & (ac < 1)).all() or not (ac[1:] < ac[:-1]).all():
            raise UserError("alphas_cumprod", f"{ac.numel()} values in "
                            f"[{float(ac.min()):g}, {float(ac.max()):g}]",
                            hint="a strictly decreasing table in (0, 1)")
        self.alphas_cumprod = ac
        self.N = ac.numel()
        self.lam = torch.log(ac) - torch.log1p(-ac)                  # decreasing
        self.t_nodes = torch.arange(1, self.N + 1, dtype=torch.float64) / self.N
        self.t_min, self.t_max = float(self.t_nodes[0]), 1.0
        self.sigma_min = float(self.ratio(self.t_min))
        self.sigma_max = float(self.ratio(self.t_max))

    def _lam_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """lambda(t) and d lambda / dt."""
        N = self.N
        u = t * N - 1.0                                                # fractional timestep
        k = torch.clamp(torch.floor(u), 0, N - 2).long()
        lam_k, lam_k1 = self.lam[k], self.lam[k + 1]
        frac = u - k.to(t.dtype)
        lam_in = lam_k + frac * (lam_k1 - lam_k)
        slope_in = (lam_k1 - lam_k) * N
        t0 = self.t_min
        below = t < t0
        tt = torch.where(below, t, torch.full_like(t, t0))
        lam_lo = self.lam[0] - 2.0 * torch.log(tt / t0)
        slope_lo = -2.0 / tt
        return torch.where(below, lam_lo, lam_in), torch.where(below, slope_lo, slope_in)

    def alpha(self, t):
        lam, _ = self._lam_slope(_as_tensor(t))
        return torch.sqrt(torch.sigmoid(lam))

    def sigma(self, t):
        lam, _ = self._lam_slope(_as_tensor(t))
        return torch.sqrt(torch.sigmoid(-lam))

    def d_alpha(self, t):
        lam, dlam = self._lam_slope(_as_tensor(t))
        return 0.5 * torch.sqrt(torch.sigmoid(lam)) * torch.sigmoid(-lam) * dlam

    def d_sigma(self, t):
        lam, dlam = self._lam_slope(_as_tensor(t))
        return -0.5 * torch.sqrt(torch.sigmoid(-lam)) * torch.sigmoid(lam) * dlam

    def log_snr(self, t):
        return self._lam_slope(_as_tensor(t))[0]

    def t_from_ratio(self, ratio):
        ratio = _as_tensor(ratio).to(torch.float64)
        lam = -2.0 * torch.log(ratio)
        neg = -self.lam                                                # increasing
        j = torch.clamp(torch.searchsorted(neg, -lam.contiguous()), 1, self.N - 1)
        lam_a, lam_b = self.lam[j - 1], self.lam[j]
        t_in = (j.to(lam.dtype) + (lam_a - lam) / (lam_a - lam_b)) / self.N
        t_lo = self.t_min * torch.exp(-(lam - self.lam[0]) / 2.0)
        return torch.where(lam > self.lam[0], t_lo, t_in)

    def timestep(self, t: Tensor) -> Tensor:
        """The network's (fractional) timestep k = N t - 1; integers are snapped exactly."""
        k = t.to(torch.float64) * self.N - 1.0
        r = torch.round(k)
        return torch.where((k - r).abs() < 1e-6, r, k)

    def params(self):
        return {"num_train_timesteps": self.N, **super().params()}


# ----------------------------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------------------------

_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class DiffusersNet(nn.Module):
    """Calls a diffusers model (UNet2DModel, transformers...) at our time t: the timestep is
    ``timestep_fn(t)``; a leading ``sample`` or ``hidden_states`` argument takes x; cond keys are
    passed through (``y`` -> ``class_labels``), with ``default_cond`` filling the rest."""

    def __init__(self, model: nn.Module, timestep_fn: Callable[[Tensor], Tensor],
                 default_cond: dict | None = None):
        super().__init__()
        self.conv = DtypeCopies(model)
        self.timestep_fn = timestep_fn
        self.default_cond = dict(default_cond or {})
        params = list(inspect.signature(model.forward).parameters)
        self.x_arg = "hidden_states" if "hidden_states" in params else "sample"
        self.accepts = set(params)
        self.in_channels = int(model.config.get("in_channels", 0) or 0)

    def forward(self, x, t, **cond):
        B = x.shape[0]
        cond = {**self.default_cond, **cond}
        if "y" in cond:
            cond["class_labels"] = cond.pop("y")
        unknown = sorted(set(cond) - self.accepts)
        if unknown:
            raise UserError("cond key", unknown[0], sorted(self.accepts - {self.x_arg, "timestep"}))
        cond = broadcast_cond(cond, B, x.device, x.dtype)
        ts = self.timestep_fn(t).to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            out = self.conv.module(x.dtype, x.device)(
                **{self.x_arg: x}, timestep=ts, return_dict=False, **cond)[0]
        if self.in_channels and out.shape[1] == 2 * self.in_channels:
            out = out[:, : self.in_channels]                           # learned variance
        return out


def _diffusers_layout(root: Path) -> tuple[Path, Path]:
    """(model folder, scheduler_config.json) of a pipeline or model folder."""
    if not root.is_dir():
        raise UserError("diffusers model folder", str(root), hint="no such directory")
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json", "model_index.json")
        comp = next((c for c in ("unet", "transformer", "prior", "decoder") if c in index
                     and (root / c).is_dir()), None)
        if comp is None:
            raise UserError("diffusers pipeline", str(root),
                            hint="no unet/ or transformer/ component in model_index.json")
        sched = root / "scheduler" / "scheduler_config.json"
        model = root / comp
    elif (root / "config.json").is_file():
        model = root
        sched = next((p for p in (root / "scheduler_config.json",
                                  root / "scheduler" / "scheduler_config.json",
                                  root.parent / "scheduler" / "scheduler_config.json")
                      if p.is_file()), root / "scheduler_config.json")
    else:
        raise UserError("diffusers model folder", str(root),
                        hint="expected model_index.json (a pipeline) or config.json (a model)")
    if not sched.is_file():
        raise UserError("diffusers scheduler config", str(sched),
                        hint="the noise schedule and prediction type come from the scheduler "
                        "config: put scheduler_config.json next to config.json")
    return model, sched


def _diffusers_class(name: str, base_name: str):
    import diffusers

    cls = getattr(diffusers, str(name), None)
    base = getattr(diffusers, base_name)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UserError(f"diffusers {base_name} class", name,
                        hint="only classes shipped with diffusers are loaded (no remote code)")
    return cls


# ----------------------------------------------------------------------------------------------
# the VAE of a latent model
# ----------------------------------------------------------------------------------------------

def _vae_folder(root: Path) -> Path | None:
    """``root/vae`` of a latent model, or None.  A pipeline whose model_index.json names a vae
    component must have the folder."""
    vae = root / "vae"
    listed = False
    if (root / "model_index.json").is_file():
        entry = read_json(root / "model_index.json", "model_index.json").get("vae")
        listed = isinstance(entry, (list, tuple)) and any(e is not None for e in entry)
    if vae.is_dir():
        return vae
    if vae.exists() or listed:
        raise UserError("diffusers vae", str(vae), hint="model_index.json names a vae component "
                        "but there is no vae/ folder" if listed else "not a directory")
    return None


def _vae_plan(vae_dir: Path, data_shape: tuple[int, ...]) -> tuple[dict, bool, int]:
    """(config, weights are safetensors, downsampling factor) of ``vae_dir``, checked against the
    denoiser's state shape before anything is loaded."""
    cfg_path = vae_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError("diffusers vae", str(vae_dir), hint="no config.json in vae/ (a "
                        "diffusers AutoencoderKL folder: config.json and "
                        "diffusion_pytorch_model.safetensors)")
    cfg = read_json(cfg_path, "vae config.json")
    chans, blocks = cfg.get("latent_channels"), cfg.get("block_out_channels")
    if isinstance(chans, bool) or not isinstance(chans, int) or not isinstance(blocks, list) \
            or not blocks:
        raise UserError("diffusers vae config", str(cfg_path), hint="need latent_channels and "
                        "block_out_channels (an AutoencoderKL config)")
    if chans != data_shape[0]:
        raise UserError("diffusers vae latent_channels", chans, hint=(
            f"the denoiser's state has {data_shape[0]} channels (data_shape "
            f"{list(data_shape)}): the VAE in {vae_dir} does not fit its denoiser"))
    factor = 2 ** (len(blocks) - 1)
    size = cfg.get("sample_size")
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        latent = tuple(int(v) // factor for v in size)
        if latent != tuple(data_shape[1:]):
            raise UserError("diffusers vae sample_size", cfg.get("sample_size"), hint=(
                f"downsampled {factor}x it is a {'x'.join(map(str, latent))} latent, but the "
                f"denoiser's state is {'x'.join(map(str, data_shape[1:]))} (data_shape "
                f"{list(data_shape)}): the VAE in {vae_dir} does not fit its denoiser"))
    for key in ("scaling_factor", "shift_factor"):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or v != v or abs(v) == float("inf")
                              or (key == "scaling_factor" and v == 0)):
            raise UserError(f"diffusers vae {key}", v, hint="a finite number"
                            + (", not 0" if key == "scaling_factor" else ""))
    return cfg, _check_folder_weights(vae_dir), factor


def load_vae(vae_dir: Path, data_shape: tuple[int, ...]) -> VAEDecoder:
    """The decoder of a latent model from its ``vae/`` folder (see the module docstring)."""
    cfg, safetensors, factor = _vae_plan(vae_dir, data_shape)
    vae_cls = _diffusers_class(cfg.get("_class_name"), "ModelMixin")
    if not callable(getattr(vae_cls, "decode", None)):
        raise UserError("diffusers vae class", vae_cls.__name__, hint="it has no decode method "
                        "(expected an autoencoder such as AutoencoderKL)")
    try:
        with quiet_diffusers():
            vae = vae_cls.from_pretrained(str(vae_dir), local_files_only=True,
                                          low_cpu_mem_usage=False, use_safetensors=safetensors)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError("diffusers vae", str(vae_dir), hint=f"cannot load it "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
    vae.eval().requires_grad_(False)
    vcfg = vae.config
    scaling = vcfg.get("scaling_factor")
    shift = vcfg.get("shift_factor")
    out_ch = int(vcfg.get("out_channels", 3))
    image = tuple(int(s) * factor for s in data_shape[1:])
    return VAEDecoder(vae, 1.0 if scaling is None else float(scaling),
                      0.0 if shift is None else float(shift),
                      latent_shape=data_shape, data_shape=(out_ch,) + image)


def load_diffusers(path: str | Path, prediction_type: str | None = None,
                   cond: dict | None = None) -> Denoiser:
    """A diffusers pipeline or model folder as a Denoiser (see the module docstring).

    ``prediction_type`` overrides the scheduler config's; ``cond`` gives default extra inputs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(path).expanduser()
    model_dir, sched_path = _diffusers_layout(root)
    mcfg = read_json(model_dir / "config.json", "model config.json")
    scfg = read_json(sched_path, "scheduler_config.json")
    safetensors = _check_folder_weights(model_dir)
    model_cls = _diffusers_class(mcfg.get("_class_name"), "ModelMixin")
    sched_cls = _diffusers_class(scfg.get("_class_name"), "SchedulerMixin")
    size = mcfg.get("sample_size")
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    chans = mcfg.get("in_channels")
    if not size or not chans:
        raise UserError("diffusers model config", str(model_dir / "config.json"),
                        hint="need in_channels and sample_size to know the data shape")
    data_shape = (int(chans),) + tuple(int(s) for s in size)
    vae_dir = _vae_folder(root)
    decoder = load_vae(vae_dir, data_shape) if vae_dir is not None else None   # before the weights
    with quiet_diffusers():
        model = model_cls.from_pretrained(str(model_dir), local_files_only=True,
                                          low_cpu_mem_usage=False, use_safetensors=safetensors)
    model.eval().requires_grad_(False)
    default_cond = dict(cond or {})
    for cpath in (root / "cond.safetensors", model_dir / "cond.safetensors"):
        if cpath.is_file():
            default_cond = {**load_weights(cpath), **default_cond}
            break
    scheduler = sched_cls.from_config(scfg)

    if sched_cls.__name__.startswith("FlowMatch"):
        N = int(scheduler.config.num_train_timesteps)
        net = DiffusersNet(model, lambda t: t * N, default_cond)
        den = PredictionDenoiser(net, make_schedule("rf"), "velocity", data_shape)
        den.shift = float(scheduler.config.get("shift", 1.0))
        den.recommended_grid = ("shift", {"shift": den.shift})
        den.dynamic_shifting = bool(scheduler.config.get("use_dynamic_shifting", False))
    else:
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise UserError("diffusers scheduler", sched_cls.__name__,
                            hint="it has no alphas_cumprod table (not a DDPM-family scheduler)")
        ac = torch.as_tensor(ac, dtype=torch.float64).clone()
        if float(ac[-1]) <= 0.0:           # zero terminal SNR (rescale_betas_zero_snr)
            ac[-1] = min(float(ac[-2]) * 0.5, 1e-8)
        ptype = prediction_type or scheduler.config.get("prediction_type", "epsilon")
        if ptype not in _PREDICTION:
            raise UserError("diffusers prediction_type", ptype, sorted(_PREDICTION))
        sched = DiscreteVPSchedule(ac)
        net = DiffusersNet(model, sched.timestep, default_cond)
        den = PredictionDenoiser(net, sched, _PREDICTION[ptype], data_shape)
    den.source = {"adapter": "diffusers", "path": str(root), "model": model_cls.__name__,
                  "scheduler": sched_cls.__name__}
    if decoder is not None:
        den.decoder = decoder
        den.source["vae"] = {"class": type(decoder.conv.net).__name__,
                             "scaling_factor": decoder.scaling_factor,
                             "shift_factor": decoder.shift_factor}
    return den

