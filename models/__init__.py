"""Schedules, prediction-type conversions, Denoiser adapters, dynamics and the model zoo."""

from samplerbench.models.conversions import PREDICTIONS, expand_like, from_x0, to_x0
from samplerbench.models.denoiser import CountingDenoiser, Denoiser, PredictionDenoiser
from samplerbench.models.dynamics import ProbabilityFlowODE, ReverseSDE
from samplerbench.models.errors import UserError
from samplerbench.models.gmm import GaussianMixture, GMMDenoiser
from samplerbench.models.schedules import SCHEDULES, Schedule, make_schedule
from samplerbench.models.zoo import available_models, load_model, model_entries, register_model

__all__ = [
    "PREDICTIONS", "expand_like", "from_x0", "to_x0", "CountingDenoiser", "Denoiser",
    "PredictionDenoiser", "ProbabilityFlowODE", "ReverseSDE", "UserError", "GaussianMixture",
    "GMMDenoiser", "SCHEDULES", "Schedule", "make_schedule", "available_models", "load_model",
    "model_entries", "register_model",
]
