"""The model registry: built-in names and ``gmm:PATH.json`` specs -> Denoiser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models.denoiser import Denoiser
from models.errors import UserError
from models.gmm import GMMDenoiser, gmm2d_mixture, gmm64_mixture, load_gmm_json
from models.schedules import make_schedule


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[], Denoiser]
    description: str
    schedule: str
    analytic: bool


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, schedule: str, analytic: bool = False):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelEntry(name, fn, description, schedule, analytic)
        return fn
    return deco


def available_models() -> list[str]:
    return sorted(_MODELS)


def model_entries() -> list[ModelEntry]:
    return [_MODELS[k] for k in available_models()]


def load_model(spec: str) -> Denoiser:
    """``spec`` is a registered name or ``gmm:PATH.json``."""
    if not isinstance(spec, str) or not spec:
        raise UserError("model", spec, available_models() + ["gmm:PATH.json"])
    if spec.startswith("gmm:"):
        return load_gmm_json(spec[4:])
    if spec not in _MODELS:
        raise UserError("model", spec, available_models() + ["gmm:PATH.json"])
    return _MODELS[spec].build()


def _gmm_family(base: str, mixture_fn, data_shape, what: str):
    for suffix, sched in (("", "edm"), ("-vp", "vp-linear"), ("-rf", "rf")):
        def build(mixture_fn=mixture_fn, sched=sched):
            return GMMDenoiser(mixture_fn(), make_schedule(sched), data_shape)
        register_model(base + suffix, f"{what}, exact denoiser, {sched} schedule", sched,
                       analytic=True)(build)


_gmm_family("gmm2d", gmm2d_mixture, (2,), "2-D 4-component anisotropic Gaussian mixture")
_gmm_family("gmm64", gmm64_mixture, (1, 8, 8),
            "64-D mixture fitted to sklearn digits (one full-covariance component per class)")
