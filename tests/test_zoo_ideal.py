"""digits-ideal: the exact posterior-mean denoiser of the empirical digits distribution
(Karras et al. 2022, App. B.3).  It equals the softmax formula, stays accurate at small sigma in
float32 input, and its PF-ODE maps noise to training images."""

from __future__ import annotations

import torch

from samplerbench.models.data import digits
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid


def test_matches_softmax_formula():
    den = load_model("digits-ideal")
    assert den.schedule.name == "edm" and den.data_shape == (1, 8, 8)
    y = digits(torch.float64)[0].reshape(1797, -1)
    x = 3.0 * torch.randn(5, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([80.0, 5.0, 1.0, 0.3, 0.05], dtype=torch.float64)
    d2 = ((x.reshape(5, 1, -1) - y[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma[:, None] ** 2), dim=1)
    ref = (w @ y).reshape(x.shape)
    assert torch.allclose(den(x, sigma), ref, rtol=1e-10, atol=1e-10)


def test_small_sigma_and_float32():
    den = load_model("digits-ideal")
    y = digits(torch.float64)[0]
    x = y[:4] + 0.002 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    out = den(x.float(), torch.full((4,), 0.002))
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), y[:4], atol=1e-6)


def test_pf_ode_maps_noise_to_training_images():
    den = load_model("digits-ideal")
    solver = get_solver("heun")
    grid = make_grid("karras", den.schedule, 64)
    n = 16
    x = initial_noise(list(range(n)), den.data_shape) * float(den.schedule.sigma(grid.t[0]))
    sol = solver.solve(solver.make_dynamics(den), x, grid)
    idx, rms = den.nearest(sol.x)
    assert float(rms.max()) < 1e-3, rms
    assert len(set(idx.tolist())) >= n - 2              # different noise, different images
