"""Adapters for pretrained models loaded from a local path (never from a hub).

Each turns a foreign network into a :class:`models.denoiser.Denoiser` (``D(x, t, **cond) -> x0``)
under one of our continuous schedules; the solvers never see which kind it was.  Model specs:

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

``edm:TARGET``
    An EDM / k-diffusion denoiser D(x, sigma, **cond) -> x0 (alpha = 1, sigma = t: our ``edm``
    schedule).  TARGET is ``package.module:NAME`` or ``path/to/file.py:NAME``, your own trusted
    code, where NAME is that callable or a zero-argument factory returning it (e.g. a function that
    builds the network and loads its weights with :func:`load_weights`).  Options after ``?``:
    ``shape=3,32,32``, ``sigma_min=0.002``, ``sigma_max=80`` (otherwise read from the network's
    ``img_channels``/``img_resolution``/``sigma_min``/``sigma_max`` attributes, as NVlabs EDM
    networks have).  ``edm:FILE.pkl`` (an NVlabs EDM network pickle) is refused: unpickling it runs
    code.

``flow:TARGET``
    A flow_matching / torchcfm velocity model with their time convention: x_s = s x1 + (1 - s) x0,
    s = 0 noise, s = 1 data, u = dx/ds.  Ours is t = 1 - s (``rf`` schedule), so the adapter calls
    the network at s = 1 - t and flips the sign: dx/dt = -u.  TARGET as for ``edm:``; options
    ``shape=...`` and ``signature=xt|tx`` (flow_matching's ``model(x, t)`` or torchcfm's
    ``model(t, x)``; by default from the name of the first parameter).

Safety: weights are read with safetensors or ``torch.load(weights_only=True)``
(:func:`load_weights`); a pickle that would import or run code raises ``UserError``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import pickle
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from samplerbench.models.denoiser import Denoiser, PredictionDenoiser
from samplerbench.models.errors import UserError
from samplerbench.models.nets import DtypeCopies, quiet_diffusers
from samplerbench.models.schedules import Schedule, _as_tensor, make_schedule

Tensor = torch.Tensor

SPEC_FORMS = ["diffusers:PATH", "edm:MODULE:NAME", "flow:MODULE:NAME"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# ----------------------------------------------------------------------------------------------
# safe weights
# ----------------------------------------------------------------------------------------------

def load_weights(path: str | Path, map_location="cpu") -> dict:
    """Tensors from ``path``: safetensors, or a torch checkpoint read with ``weights_only=True``.

    A pickle holding anything but tensors and plain containers (classes, functions, code) is
    refused with ``UserError``; nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint", str(path), hint="no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # "pickle protocol 4" advice
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError("checkpoint", str(path), hint=(
            "refusing to unpickle it: the file holds Python objects that would import or run code "
            "when loaded (weights_only=True rejected it" + (f": {first}" if first else "") + "). "
            "Convert the weights to safetensors in trusted code, or build the network in your own "
            "module and name it as edm:MODULE:NAME / flow:MODULE:NAME")) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError("checkpoint", str(path), hint=f"cannot read it as safetensors or a torch "
                        f"checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None


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
        index = _read_json(folder / f"{WEIGHTS_NAME}.bin.index.json", "weights index")
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
# networks in the input's dtype / device
# ----------------------------------------------------------------------------------------------

def _broadcast_cond(cond: dict, B: int, device, dtype) -> dict:
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
        cond = _broadcast_cond(cond, B, x.device, x.dtype)
        ts = self.timestep_fn(t).to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            out = self.conv.module(x.dtype, x.device)(
                **{self.x_arg: x}, timestep=ts, return_dict=False, **cond)[0]
        if self.in_channels and out.shape[1] == 2 * self.in_channels:
            out = out[:, : self.in_channels]                           # learned variance
        return out


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(what, str(path), hint=f"cannot read it as UTF-8 JSON ({exc})") from None


def _diffusers_layout(root: Path) -> tuple[Path, Path]:
    """(model folder, scheduler_config.json) of a pipeline or model folder."""
    if not root.is_dir():
        raise UserError("diffusers model folder", str(root), hint="no such directory")
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json", "model_index.json")
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


def load_diffusers(path: str | Path, prediction_type: str | None = None,
                   cond: dict | None = None) -> Denoiser:
    """A diffusers pipeline or model folder as a Denoiser (see the module docstring).

    ``prediction_type`` overrides the scheduler config's; ``cond`` gives default extra inputs."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(path).expanduser()
    model_dir, sched_path = _diffusers_layout(root)
    mcfg = _read_json(model_dir / "config.json", "model config.json")
    scfg = _read_json(sched_path, "scheduler_config.json")
    safetensors = _check_folder_weights(model_dir)
    model_cls = _diffusers_class(mcfg.get("_class_name"), "ModelMixin")
    sched_cls = _diffusers_class(scfg.get("_class_name"), "SchedulerMixin")
    with quiet_diffusers():
        model = model_cls.from_pretrained(str(model_dir), local_files_only=True,
                                          low_cpu_mem_usage=False, use_safetensors=safetensors)
    model.eval().requires_grad_(False)
    default_cond = dict(cond or {})
    for cpath in (root / "cond.safetensors", model_dir / "cond.safetensors"):
        if cpath.is_file():
            default_cond = {**load_weights(cpath), **default_cond}
            break
    size = mcfg.get("sample_size")
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    chans = mcfg.get("in_channels")
    if not size or not chans:
        raise UserError("diffusers model config", str(model_dir / "config.json"),
                        hint="need in_channels and sample_size to know the data shape")
    data_shape = (int(chans),) + tuple(int(s) for s in size)
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
    return den


# ----------------------------------------------------------------------------------------------
# EDM / k-diffusion D(x, sigma) and flow_matching / torchcfm velocity callables
# ----------------------------------------------------------------------------------------------

class _CallNet(nn.Module):
    """net(x, tau, **cond) with tau = time_fn(t), in the input's dtype; output times ``sign``."""

    def __init__(self, fn, time_fn: Callable[[Tensor], Tensor], order: str = "xt",
                 sign: float = 1.0):
        super().__init__()
        self.conv = DtypeCopies(fn)
        self.time_fn, self.order, self.sign = time_fn, order, float(sign)

    def forward(self, x, t, **cond):
        fn = self.conv.module(x.dtype, x.device)
        tau = self.time_fn(t).to(device=x.device, dtype=x.dtype)
        cond = _broadcast_cond(cond, x.shape[0], x.device, x.dtype)
        with torch.no_grad():
            out = fn(x, tau, **cond) if self.order == "xt" else fn(tau, x, **cond)
        return out if self.sign == 1.0 else self.sign * out


def edm_denoiser(fn: Callable, data_shape: tuple[int, ...], sigma_min: float = 0.002,
                 sigma_max: float = 80.0) -> Denoiser:
    """An EDM / k-diffusion denoiser ``fn(x, sigma, **cond) -> x0`` as a Denoiser on the ``edm``
    schedule (alpha = 1, sigma = t).  Its PF-ODE is dx/dsigma = (x - D(x, sigma)) / sigma."""
    sched = make_schedule("edm", t_min=float(sigma_min), t_max=float(sigma_max))
    den = PredictionDenoiser(_CallNet(fn, lambda t: t), sched, "x0", tuple(data_shape))
    den.source = {"adapter": "edm"}
    return den


def flow_denoiser(fn: Callable, data_shape: tuple[int, ...], signature: str = "auto"
                  ) -> Denoiser:
    """A flow_matching / torchcfm velocity model (s = 0 noise, s = 1 data, u = dx/ds) as a
    Denoiser on the ``rf`` schedule with t = 1 - s and velocity dx/dt = -u(x, 1 - t).

    ``signature``: "xt" (flow_matching ``model(x, t, **extras)``), "tx" (torchcfm / torchdyn
    ``model(t, x)``) or "auto" (tx if the first parameter is named ``t``)."""
    order = _signature(fn, signature)
    den = PredictionDenoiser(_CallNet(fn, lambda t: 1.0 - t, order, sign=-1.0),
                             make_schedule("rf"), "velocity", tuple(data_shape))
    den.source = {"adapter": "flow", "signature": order}
    return den


def _signature(fn, signature: str) -> str:
    if signature not in ("auto", "xt", "tx"):
        raise UserError("flow signature", signature, ["auto", "xt", "tx"])
    if signature != "auto":
        return signature
    f = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = [p for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return "xt"
    return "tx" if params and params[0].name == "t" else "xt"


def load_callable(target: str, what: str = "model"):
    """``package.module:NAME`` or ``path/to/file.py:NAME`` -> the object NAME (your own code:
    importing it runs it, exactly as a solver plugin does)."""
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise UserError(f"{what} target", target, hint="expected MODULE:NAME or FILE.py:NAME")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"{what} target", target, hint=f"no such file: {path}")
            key = f"_samplerbench_user_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(key, None)       # a half-run module is not kept
                raise
        else:
            module = importlib.import_module(mod_name)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"{what} target", target, hint=f"cannot import it ({exc})") from None
    except SystemExit as exc:
        # sys.exit() in a user module must not end the run as if it had finished
        raise UserError(f"{what} target", target, hint=f"importing {mod_name} called "
                        f"sys.exit({exc.code!r})") from None
    except Exception as exc:     # SyntaxError, or anything the module raises while it runs
        raise UserError(f"{what} target", target, hint=f"importing {mod_name} failed: "
                        f"{_one_line(exc)}") from None
    if not hasattr(module, attr):
        raise UserError(f"{what} target", target, hint=f"{mod_name} has no attribute {attr!r}")
    return getattr(module, attr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _resolve_network(obj, target: str = "", what: str = "model"):
    """NAME is the network or a zero-argument factory returning it."""
    if isinstance(obj, nn.Module) or not callable(obj):
        return obj
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return obj
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if inspect.isclass(obj) or not required:
        try:
            return obj()
        except UserError:
            raise
        except SystemExit as exc:
            raise UserError(f"{what} target", target, hint=f"building it called "
                            f"sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise UserError(f"{what} target", target, hint=f"building the network failed: "
                            f"{_one_line(exc)}") from None
    return obj


def _parse_options(text: str, allowed: tuple[str, ...], what: str) -> dict:
    opts = {}
    for part in filter(None, text.split("&")):
        key, eq, value = part.partition("=")
        if not eq or key not in allowed:
            raise UserError(f"{what} option", part, list(allowed))
        opts[key] = value
    return opts


def _shape(value: str | None, net, what: str) -> tuple[int, ...]:
    if value:
        try:
            shape = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise UserError(f"{what} option shape", value, hint="e.g. shape=3,32,32") from None
        if any(v < 1 for v in shape):
            raise UserError(f"{what} option shape", value, hint="positive sizes, e.g. "
                            "shape=3,32,32")
        return shape
    c, r = getattr(net, "img_channels", None), getattr(net, "img_resolution", None)
    if c and r:
        return (int(c), int(r), int(r))
    shape = getattr(net, "data_shape", None)
    if shape:
        return tuple(int(s) for s in shape)
    raise UserError(f"{what} option shape", None, hint="give the data shape, e.g. "
                    f"{what}:my_module:make_net?shape=3,32,32")


def load_spec(spec: str) -> Denoiser:
    """A ``diffusers:`` / ``edm:`` / ``flow:`` model spec as a Denoiser."""
    prefix, _, rest = spec.partition(":")
    if not rest:
        raise UserError("model", spec, SPEC_FORMS)
    if prefix == "diffusers":
        return load_diffusers(rest)
    if prefix not in ("edm", "flow"):
        raise UserError("model", spec, SPEC_FORMS)
    target, _, query = rest.partition("?")
    if Path(target).suffix in _PICKLE_SUFFIXES or Path(target).suffix == ".safetensors":
        load_weights(target)     # refuses a code-carrying pickle with a clear message
        raise UserError(f"{prefix} model", target, hint=(
            "a weights file holds no architecture: write a factory in your own module that "
            f"builds the network and loads the weights with models.adapters.load_weights, and "
            f"use {prefix}:MODULE:FACTORY"))
    if prefix == "edm":
        opts = _parse_options(query, ("shape", "sigma_min", "sigma_max"), "edm")
        net = _resolve_network(load_callable(target, "edm"), target, "edm")
        try:
            smin = float(opts.get("sigma_min", getattr(net, "sigma_min", 0.002)))
            smax = float(opts.get("sigma_max", getattr(net, "sigma_max", 80.0)))
        except (TypeError, ValueError):
            raise UserError("edm sigma_min/sigma_max", (opts.get("sigma_min"),
                            opts.get("sigma_max")), hint="numbers, e.g. sigma_max=80") from None
        if not (0 < smin < smax and math.isfinite(smax)):
            raise UserError("edm sigma_min/sigma_max", (smin, smax),
                            hint="0 < sigma_min < sigma_max")
        den = edm_denoiser(net, _shape(opts.get("shape"), net, "edm"), smin, smax)
    else:
        opts = _parse_options(query, ("shape", "signature"), "flow")
        net = _resolve_network(load_callable(target, "flow"), target, "flow")
        den = flow_denoiser(net, _shape(opts.get("shape"), net, "flow"),
                            opts.get("signature", "auto"))
    den.source = {**den.source, "target": target}
    return den
