"""The model registry: built-in names and ``gmm:PATH.json`` / ``diffusers:PATH`` /
``edm:MODULE:NAME`` / ``flow:MODULE:NAME`` specs -> Denoiser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from samplerbench.models.denoiser import Denoiser
from samplerbench.models.errors import UserError
from samplerbench.models.gmm import GMMDenoiser, gmm2d_mixture, gmm64_mixture, load_gmm_json
from samplerbench.models.schedules import make_schedule


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[], Denoiser]
    description: str
    schedule: str
    analytic: bool
    num_classes: int | None = None     # class-conditional models (classifier-free guidance)
    dataset: str | None = None         # the training data (models.data), for weak metrics / FID


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, schedule: str, analytic: bool = False,
                   num_classes: int | None = None, dataset: str | None = None):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelEntry(name, fn, description, schedule, analytic, num_classes,
                                   dataset)
        return fn
    return deco


def model_entry(name: str) -> ModelEntry | None:
    return _MODELS.get(name)


def is_analytic(spec: str) -> bool:
    """Whether model ``spec`` has a closed-form denoiser (a mixture, the empirical digits
    denoiser, a ``gmm:`` file) rather than a trained network."""
    if isinstance(spec, str) and spec.startswith("gmm:"):
        return True
    entry = _MODELS.get(spec)
    return bool(entry and entry.analytic)


def available_models() -> list[str]:
    return sorted(_MODELS)


def model_entries() -> list[ModelEntry]:
    return [_MODELS[k] for k in available_models()]


SPEC_FORMS = ["gmm:PATH.json", "diffusers:PATH", "edm:MODULE:NAME", "edm:FILE.pkl?trust_code=1",
              "flow:MODULE:NAME"]


@dataclass(frozen=True)
class SpecForm:
    """A model-spec form for your own models, as ``samplerbench list models`` shows it."""
    form: str
    options: str          # what may follow ``?`` (``&``-separated key=value)
    description: str
    example: str          # one shell line that runs as printed (from an empty folder)


_EXAMPLES = "python -m samplerbench.models.examples"
SPEC_FORM_HELP = [
    SpecForm("gmm:PATH.json", "-",
             "analytic Gaussian mixture from a JSON file: weights, means, stds or covs, schedule",
             f"{_EXAMPLES} gmm mix.json && samplerbench sample gmm:mix.json heun --steps 18 "
             "--out x.npz"),
    SpecForm("diffusers:PATH", "-",
             "local diffusers pipeline or model folder (DDPM-family or FlowMatch scheduler; a "
             "vae/ subfolder makes it a latent model)",
             f"{_EXAMPLES} ddpm ddpm && samplerbench sample diffusers:ddpm ddim --steps 10 "
             "--out x.npz"),
    SpecForm("edm:MODULE:NAME", "shape=C,H,W sigma_min= sigma_max=",
             "EDM / k-diffusion denoiser D(x, sigma) from your own code (MODULE or FILE.py; "
             "NAME a network or a factory)",
             "samplerbench sample edm:samplerbench.models.examples:gaussian_edm heun --steps 18 "
             "--out x.npz"),
    SpecForm("edm:FILE.pkl", "trust_code=1 (required) shape= ...",
             "NVlabs EDM network pickle, pickle.load(f)['ema'] called as net(x, sigma); "
             "trust_code=1 runs the file's code (refused without it); options as edm:MODULE:NAME",
             f"{_EXAMPLES} edm-pkl net.pkl && samplerbench sample 'edm:net.pkl?trust_code=1' "
             "heun --steps 18 --out x.npz"),
    SpecForm("flow:MODULE:NAME", "shape=C,H,W signature=xt|tx",
             "flow_matching / torchcfm velocity model (s = 0 noise, s = 1 data) from your own "
             "code",
             "samplerbench sample flow:samplerbench.models.examples:gaussian_flow euler --steps "
             "16 --out x.npz"),
]


def load_model(spec: str) -> Denoiser:
    """``spec`` is a registered name, ``gmm:PATH.json``, or a pretrained-model spec
    (``diffusers:PATH``, ``edm:MODULE:NAME``, ``flow:MODULE:NAME``; see models/adapters.py)."""
    if not isinstance(spec, str) or not spec:
        raise UserError("model", spec, available_models() + SPEC_FORMS)
    if spec.startswith("gmm:"):
        return load_gmm_json(spec[4:])
    if spec.split(":", 1)[0] in ("diffusers", "edm", "flow") and ":" in spec:
        from samplerbench.models.adapters import load_spec

        return load_spec(spec)
    if spec not in _MODELS:
        raise UserError("model", spec, available_models() + SPEC_FORMS)
    entry = _MODELS[spec]
    den = entry.build()
    if entry.dataset is not None:
        den.dataset = entry.dataset
    return den


def _gmm_family(base: str, mixture_fn, data_shape, what: str):
    for suffix, sched in (("", "edm"), ("-vp", "vp-linear"), ("-rf", "rf")):
        def build(mixture_fn=mixture_fn, sched=sched):
            return GMMDenoiser(mixture_fn(), make_schedule(sched), data_shape)
        register_model(base + suffix, f"{what}, exact denoiser, {sched} schedule", sched,
                       analytic=True)(build)


_gmm_family("gmm2d", gmm2d_mixture, (2,), "2-D 4-component anisotropic Gaussian mixture")
_gmm_family("gmm64", gmm64_mixture, (1, 8, 8),
            "64-D mixture fitted to sklearn digits (one full-covariance component per class)")


# --------------------------------------------------------------------------------------------
# trained checkpoints (models/checkpoints/, reproduced by `samplerbench train NAME`)
# --------------------------------------------------------------------------------------------

_TRAINED = {
    "moons-vp": ("two moons, MLP, eps-prediction", "vp-linear", None),
    "moons-rf": ("two moons, MLP, rectified-flow velocity", "rf", None),
    "checkerboard-vp": ("2-D checkerboard, MLP, eps-prediction", "vp-linear", None),
    "checkerboard-rf": ("2-D checkerboard, MLP, rectified-flow velocity", "rf", None),
    "digits-vp": ("sklearn 8x8 digits, small U-Net, eps-prediction", "vp-linear", None),
    "digits-rf": ("sklearn 8x8 digits, small U-Net, rectified-flow velocity", "rf", None),
    "digits-cond-rf": ("sklearn 8x8 digits, class-conditional U-Net (null class 10 for "
                       "classifier-free guidance), rectified-flow velocity", "rf", 10),
    "digits-latent-rf": ("latent model: sklearn 8x8 digits in the 2x4x4 latent of the digits-ae "
                         "autoencoder (decoded for FID), small U-Net, rectified-flow velocity",
                         "rf", None),
    "digits-latent-vp": ("latent model: sklearn 8x8 digits in the 2x4x4 latent of the digits-ae "
                         "autoencoder (decoded for FID), small U-Net, eps-prediction",
                         "vp-linear", None),
}


def _trained_family():
    for name, (what, sched, num_classes) in _TRAINED.items():
        def build(name=name):
            from samplerbench.models.nets import load_checkpoint

            return load_checkpoint(name)
        register_model(name, f"{what}; trained checkpoint (models/checkpoints)", sched,
                       num_classes=num_classes, dataset=name.split("-")[0])(build)


_trained_family()


@register_model("digits-ideal", "exact posterior-mean denoiser of the 1797 sklearn digits "
                "(Karras et al. 2022 App. B.3), edm schedule; PF-ODE maps noise to training images",
                "edm", analytic=True, dataset="digits")
def _digits_ideal():
    from samplerbench.models.data import digits
    from samplerbench.models.ideal import EmpiricalDenoiser

    x, _ = digits(torch.float64)
    return EmpiricalDenoiser(x, make_schedule("edm"))
