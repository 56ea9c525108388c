"""Classifier-free guidance (models/guidance.py): the combination rule, NFE versus forward-pass
counting, label handling, and on digits-cond-rf that w > 0 raises the share of samples a digits
classifier assigns to the requested class."""

from __future__ import annotations

import pytest
import torch

from samplerbench.models.data import digits
from samplerbench.models.denoiser import Denoiser
from samplerbench.models.dynamics import ProbabilityFlowODE
from samplerbench.models.errors import UserError
from samplerbench.models.guidance import CFGDenoiser, class_labels, conditional_models, guided
from samplerbench.models.schedules import make_schedule
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid


class ToyConditional(Denoiser):
    """x0 = tanh(x) + y / 10 (null class 3 -> 0): a cheap stand-in with class labels."""

    num_classes = 3

    def __init__(self, schedule="rf"):
        super().__init__(make_schedule(schedule), (2,))
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        y = torch.full((x.shape[0],), 3) if y is None else y
        shift = torch.where(y == 3, torch.zeros_like(y), y + 1).to(x.dtype)[:, None]
        return torch.tanh(x) * (1 + t[:, None]) + shift / 10


@pytest.mark.parametrize("schedule", ["rf", "vp-linear", "edm"])
def test_cfg_combines_x0_and_velocity_alike(schedule):
    inner = ToyConditional(schedule)
    w, y = 2.5, torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2, 0.01], dtype=torch.float64)
    cfg = CFGDenoiser(inner, w, labels=y)
    x0_c, x0_u = inner(x, t, y=y), inner(x, t, y=torch.full_like(y, 3))
    assert torch.allclose(cfg(x, t), (1 + w) * x0_c - w * x0_u)
    # seed convention: v = (1 + w) v_cond - w v_uncond
    v = ProbabilityFlowODE(cfg).velocity(t, x)
    v_c = ProbabilityFlowODE(inner, cond={"y": y}).velocity(t, x)
    v_u = ProbabilityFlowODE(inner, cond={"y": torch.full_like(y, 3)}).velocity(t, x)
    assert torch.allclose(v, (1 + w) * v_c - w * v_u, rtol=1e-12, atol=1e-12)


def test_cfg_counts_one_nfe_two_forward_passes():
    inner = ToyConditional()
    den = CFGDenoiser(inner, 1.5)
    solver = get_solver("heun")
    grid = make_grid("karras", den.schedule, 8)
    x = torch.randn(5, 2, dtype=torch.float64)
    dyn = solver.make_dynamics(den, cond={"y": torch.tensor([0, 1, 2, 0, 1])})
    sol = solver.solve(dyn, x, grid)
    assert sol.nfe == solver.declared_nfe(grid) == 15
    assert sol.forward_passes == 2 * sol.nfe
    assert inner.calls == sol.nfe                       # the two halves run as one batched call
    # w = 0 is the conditional model: one forward pass per evaluation
    sol0 = solver.solve(solver.make_dynamics(CFGDenoiser(inner, 0.0, labels=[1])), x, grid)
    assert sol0.forward_passes == sol0.nfe


def test_cfg_label_errors():
    inner = ToyConditional()
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(UserError, match="labels"):
        CFGDenoiser(inner, 1.0)(x, t)                   # no labels at all
    with pytest.raises(UserError, match="one label per sample"):
        CFGDenoiser(inner, 1.0, labels=[0, 1])(x, t)
    with pytest.raises(UserError, match="class labels"):
        CFGDenoiser(inner, 1.0, labels=[0, 7])
    with pytest.raises(UserError, match="guidance"):
        CFGDenoiser(inner, float("nan"))
    with pytest.raises(UserError, match="not class-conditional"):
        guided("digits-rf", 1.0)
    assert class_labels([0, 1, 12, 25], 10).tolist() == [0, 1, 2, 5]
    assert conditional_models() == ["digits-cond-rf"]


def _requested(den, labels, clf, steps=16):
    """(share classified as the requested class, mean classifier probability of that class)."""
    solver = get_solver("heun")
    grid = make_grid("karras", den.schedule, steps)
    n = len(labels)
    x = initial_noise(list(range(n)), den.data_shape, dtype=torch.float32)
    x = x * float(den.schedule.sigma(grid.t[0]))
    sol = solver.solve(solver.make_dynamics(den), x, grid)
    p = torch.as_tensor(clf.predict_proba(sol.x.reshape(n, -1).double().numpy()))
    return (float((p.argmax(1) == labels).double().mean()),
            float(p[torch.arange(n), labels].mean()))


def test_guidance_raises_share_of_requested_class():
    from sklearn.linear_model import LogisticRegression

    x, y = digits()
    clf = LogisticRegression(max_iter=3000).fit(x.reshape(len(x), -1).numpy(), y.numpy())
    labels = class_labels(range(300), 10)
    den = load_model("digits-cond-rf")
    share_u, _ = _requested(guided(den, -1.0, labels), labels, clf)     # w = -1: unconditional
    share_0, prob_0 = _requested(guided(den, 0.0, labels), labels, clf)  # conditional, unguided
    share_2, prob_2 = _requested(guided(den, 2.0, labels), labels, clf)
    # measured: 0.11, (0.993, 0.965), (1.0, 0.996)
    assert share_u < 0.3
    assert share_0 > 0.8 and share_2 >= share_0 and share_2 > 0.95
    assert prob_2 > prob_0 + 0.01
