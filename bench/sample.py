"""``samplerbench sample``: one model, one solver, one grid -> an .npz of samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samplerbench.bench.runner import DTYPES, resolve_device
from samplerbench.bench.store import atomic_open, check_out_file
from samplerbench.models.errors import UserError
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_grid, make_noise
from samplerbench.solvers.noise import NOISE_MODES, sample_seeds


def draw(model: str, solver: str, steps: int, grid: str = "karras", final: str = "zero",
         n: int = 64, seed: int = 0, noise: str = "fresh", solver_opts: dict | None = None,
         dtype: str = "float32", device: str = "cpu", grid_params: dict | None = None):
    """Sample ``n`` points; returns (x_init, solution, grid)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError("n", n, hint="an integer >= 1")
    if noise not in NOISE_MODES:
        raise UserError("noise", noise, NOISE_MODES)
    if dtype not in DTYPES:
        raise UserError("dtype", dtype, sorted(DTYPES))
    dev = resolve_device(device)
    den = load_model(model)
    s = get_solver(solver, **(solver_opts or {}))
    g = make_grid(grid, den.schedule, steps, final=final, **(grid_params or {}))
    reason = s.check(den, g)
    if reason:
        raise UserError(f"solver {solver!r} on model {model!r}", grid, hint=reason)
    seeds = sample_seeds(seed, n)
    x_init = (initial_noise(seeds, den.data_shape) * float(den.schedule.sigma(g.t_start))).to(
        device=dev, dtype=DTYPES[dtype])
    src = make_noise(noise, seeds, den.data_shape, g, dtype=x_init.dtype, device=dev) \
        if s.stochastic else None
    sol = s.solve(s.make_dynamics(den), x_init, g, src)
    return x_init, sol, g


def sample_to_npz(model, solver, steps, out, **kw) -> dict:
    """Draw samples and write them to ``out`` (.npz) atomically; ``out`` is checked before the
    solve, so a bad path costs no compute."""
    path = Path(out)
    if path.suffix != ".npz":
        raise UserError("--out", str(out), hint="the output file must end in .npz")
    check_out_file(path, "--out")
    x_init, sol, g = draw(model, solver, steps, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, x_init=x_init.cpu().double().numpy(),
                 x=sol.x.detach().cpu().double().numpy(), t=g.t.numpy(), nfe=np.int64(sol.nfe),
                 forward_passes=np.int64(sol.forward_passes), status=np.str_(sol.status))
    return {"n": x_init.shape[0], "nfe": sol.nfe, "status": sol.status}
