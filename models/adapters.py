"""Adapters for pretrained models loaded from a local path (never from a hub), one module per
family, and :func:`load_spec`, which dispatches a model spec to them.

Each turns a foreign network into a :class:`models.denoiser.Denoiser` (``D(x, t, **cond) -> x0``)
under one of our continuous schedules; the solvers never see which kind it was.  Model specs:

``diffusers:PATH``
    A diffusers pipeline or model folder with its scheduler config; a folder with a ``vae/``
    subfolder is a latent model with a decoder.  See :mod:`samplerbench.models.adapters_diffusers`.

``edm:TARGET``
    An EDM / k-diffusion denoiser D(x, sigma, **cond) -> x0 (alpha = 1, sigma = t: our ``edm``
    schedule).  TARGET is ``package.module:NAME`` or ``path/to/file.py:NAME``, your own trusted
    code, where NAME is that callable or a zero-argument factory returning it (e.g. a function that
    builds the network and loads its weights with :func:`load_weights`).  Options after ``?``:
    ``shape=3,32,32``, ``sigma_min=0.002``, ``sigma_max=80`` (otherwise read from the network's
    ``img_channels``/``img_resolution``/``sigma_min``/``sigma_max`` attributes, as NVlabs EDM
    networks have).

``edm:FILE.pkl?trust_code=1``
    An NVlabs EDM network pickle (``pickle.load(f)['ema']``, an ``EDMPrecond`` called as
    ``net(x, sigma, class_labels)``).  Unpickling it **runs the code it carries** (the network's
    module source, embedded by ``torch_utils.persistence``), so without ``trust_code=1`` it is
    refused with an error naming the opt-in; with it, a warning is printed and the file is loaded
    by :mod:`samplerbench.models.edm_pickle` (no ``torch_utils`` needed).  The network keeps its
    own compute dtype (EDMPrecond works in float32); options ``shape``, ``sigma_min``,
    ``sigma_max`` as above (EDMPrecond's defaults 0 and inf become EDM's 0.002 and 80).

``flow:TARGET``
    A flow_matching / torchcfm velocity model with their time convention: x_s = s x1 + (1 - s) x0,
    s = 0 noise, s = 1 data, u = dx/ds.  Ours is t = 1 - s (``rf`` schedule), so the adapter calls
    the network at s = 1 - t and flips the sign: dx/dt = -u.  TARGET as for ``edm:``; options
    ``shape=...`` and ``signature=xt|tx`` (flow_matching's ``model(x, t)`` or torchcfm's
    ``model(t, x)``; by default from the name of the first parameter).

Safety: weights are read with safetensors or ``torch.load(weights_only=True)``
(:func:`load_weights`); a pickle that would import or run code raises ``UserError``, except an
``edm:FILE.pkl`` the user opted into with ``trust_code=1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# the diffusers family and the safe-weights helpers have their own modules; the names stay
# importable from here
from samplerbench.models.adapters_diffusers import (  # noqa: F401
    WEIGHTS_NAME, DiffusersNet, DiscreteVPSchedule, _check_folder_weights, load_diffusers,
    load_vae)
from samplerbench.models.denoiser import Denoiser, PredictionDenoiser
from samplerbench.models.errors import UserError
from samplerbench.models.nets import DtypeCopies, broadcast_cond
from samplerbench.models.schedules import make_schedule
from samplerbench.models.weights import PICKLE_SUFFIXES as _PICKLE_SUFFIXES
from samplerbench.models.weights import load_weights, read_json  # noqa: F401

Tensor = torch.Tensor

SPEC_FORMS = ["diffusers:PATH", "edm:MODULE:NAME", "edm:FILE.pkl?trust_code=1",
              "flow:MODULE:NAME"]
EDM_PICKLE_SUFFIXES = (".pkl", ".pickle")
_WARNED: set[str] = set()


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
        cond = broadcast_cond(cond, x.shape[0], x.device, x.dtype)
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


def _edm_sigmas(opts: dict, net) -> tuple[float, float]:
    """sigma range: the options, else the network's ``sigma_min``/``sigma_max`` where usable
    (NVlabs EDMPrecond defaults to 0 and inf, which mean "no limit"), else EDM's 0.002 and 80."""
    try:
        smin = float(opts.get("sigma_min", getattr(net, "sigma_min", 0.002)))
        smax = float(opts.get("sigma_max", getattr(net, "sigma_max", 80.0)))
    except (TypeError, ValueError):
        raise UserError("edm sigma_min/sigma_max", (opts.get("sigma_min"),
                        opts.get("sigma_max")), hint="numbers, e.g. sigma_max=80") from None
    if "sigma_min" not in opts and smin == 0:
        smin = 0.002
    if "sigma_max" not in opts and smax == math.inf:
        smax = 80.0
    if not (0 < smin < smax and math.isfinite(smax)):
        raise UserError("edm sigma_min/sigma_max", (smin, smax),
                        hint="0 < sigma_min < sigma_max")
    return smin, smax


def _trust(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise UserError("edm option trust_code", value, ["1", "0"])


class _OwnDtype(nn.Module):
    """A network that chooses its own compute dtype (NVlabs EDMPrecond casts its input to float32,
    or float16 on CUDA): it is moved to the input's device but never converted, and its output is
    cast to the input's dtype.  Its parameters are hidden from :class:`DtypeCopies`."""

    def __init__(self, net):
        super().__init__()
        self.__dict__["net"] = net

    def forward(self, x, sigma, **cond):
        net = self.__dict__["net"]
        p = next(iter(net.parameters()), None) if isinstance(net, nn.Module) else None
        if p is not None and p.device != x.device:
            net = self.__dict__["net"] = net.to(x.device)
        return net(x, sigma, **cond).to(x.dtype)


def load_edm_pickle(target: str, query: str = "") -> Denoiser:
    """``edm:FILE.pkl``: an NVlabs EDM network pickle, ``pickle.load(f)['ema']`` called as
    ``net(x, sigma, **cond)``.  Refused unless ``trust_code=1``: unpickling it runs the code it
    carries (:mod:`samplerbench.models.edm_pickle`)."""
    opts = _parse_options(query, ("shape", "sigma_min", "sigma_max", "trust_code"), "edm")
    if not _trust(opts.get("trust_code", "0")):
        keep = "&".join(q for q in (query or "").split("&") if q and
                        not q.startswith("trust_code="))
        optin = f"edm:{target}?{'&'.join([keep, 'trust_code=1'] if keep else ['trust_code=1'])}"
        try:
            load_weights(target)     # a weights-only reader: it runs nothing
        except UserError as exc:
            if "refusing to unpickle" not in str(exc):
                raise
            raise UserError("edm model", target, hint=(
                "refusing to unpickle it: an NVlabs EDM network pickle carries Python code "
                "that unpickling runs. If you trust the file, opt in with "
                f"{optin} (runs the file's code)")) from None
        raise UserError("edm model", target, hint=(
            "it holds only tensors, no network: write a factory in your own module that builds "
            "the network and loads them with models.weights.load_weights, and use "
            "edm:MODULE:FACTORY"))
    if target not in _WARNED:           # once per file and process (a run loads it twice)
        _WARNED.add(target)
        sys.stderr.write(f"samplerbench: warning: trust_code=1: unpickling {target} runs the "
                         "code it carries (an NVlabs EDM pickle embeds its network's source); "
                         "use it only for files you trust\n")
        sys.stderr.flush()
    from samplerbench.models.edm_pickle import load_network

    net = load_network(target)
    if isinstance(net, nn.Module):
        net.eval().requires_grad_(False)
    smin, smax = _edm_sigmas(opts, net)
    den = edm_denoiser(_OwnDtype(net), _shape(opts.get("shape"), net, "edm"), smin, smax)
    den.source = {**den.source, "target": target, "trust_code": True,
                  "network": type(net).__name__}
    den.network = net
    return den


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
    if prefix == "edm" and Path(target).suffix in EDM_PICKLE_SUFFIXES:
        return load_edm_pickle(target, query)
    if Path(target).suffix in _PICKLE_SUFFIXES or Path(target).suffix == ".safetensors":
        load_weights(target)     # refuses a code-carrying pickle with a clear message
        raise UserError(f"{prefix} model", target, hint=(
            "a weights file holds no architecture: write a factory in your own module that "
            f"builds the network and loads the weights with models.weights.load_weights, and "
            f"use {prefix}:MODULE:FACTORY"))
    if prefix == "edm":
        opts = _parse_options(query, ("shape", "sigma_min", "sigma_max", "trust_code"), "edm")
        if "trust_code" in opts:
            raise UserError("edm option trust_code", opts["trust_code"], hint="it applies to an "
                            "NVlabs network pickle only: edm:FILE.pkl?trust_code=1")
        net = _resolve_network(load_callable(target, "edm"), target, "edm")
        smin, smax = _edm_sigmas(opts, net)
        den = edm_denoiser(net, _shape(opts.get("shape"), net, "edm"), smin, smax)
    else:
        opts = _parse_options(query, ("shape", "signature"), "flow")
        net = _resolve_network(load_callable(target, "flow"), target, "flow")
        den = flow_denoiser(net, _shape(opts.get("shape"), net, "flow"),
                            opts.get("signature", "auto"))
    den.source = {**den.source, "target": target}
    return den
