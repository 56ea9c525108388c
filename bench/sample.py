"""``samplerbench sample``: one model, one solver, one grid -> an .npz of samples."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from samplerbench.bench.decode import decode_samples
from samplerbench.bench.runner import DTYPES, resolve_device
from samplerbench.bench.store import atomic_open, check_out_file
from samplerbench.models.errors import UserError
from samplerbench.models.zoo import load_model
from samplerbench.solvers import get_solver, initial_noise, make_noise
from samplerbench.solvers.grids import AUTO, check_grid_spec, load_grid_file, make_model_grid
from samplerbench.solvers.noise import NOISE_MODES, sample_seeds


def load_x_init(path, n: int | None, data_shape: tuple) -> np.ndarray:
    """The standard-normal draw z [n, *data_shape] of ``--x-init FILE.npy`` (float64); a file
    that cannot be read as a plain array (pickles are refused), a wrong shape or non-finite
    values raise ``UserError`` naming --x-init."""
    field = "--x-init"
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
            raise UserError(field, str(path), hint="not a .npy file; save z with numpy.save")
        z = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(field, str(path), hint="file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(field, str(path), hint=f"not a readable .npy array "
                        f"({getattr(exc, 'strerror', None) or exc}); save z with numpy.save"
                        ) from None
    if not isinstance(z, np.ndarray):             # an .npz archive
        z.close()
        raise UserError(field, str(path), hint="an .npz archive; give one .npy array "
                        "(numpy.save)")
    want = ((n,) if n is not None else ("n",)) + tuple(data_shape)
    if z.ndim != 1 + len(data_shape) or tuple(z.shape[1:]) != tuple(data_shape) or \
            (n is not None and z.shape[0] != n) or z.shape[0] < 1:
        raise UserError(field, str(path), hint=f"shape {list(z.shape)}; the model needs "
                        f"[{', '.join(map(str, want))}] (a standard-normal draw per sample)")
    if not np.issubdtype(z.dtype, np.floating) and not np.issubdtype(z.dtype, np.integer):
        raise UserError(field, str(path), hint=f"dtype {z.dtype}; expected floating-point numbers")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise UserError(field, str(path), hint=f"{int((~np.isfinite(z)).sum())} non-finite "
                        "values; z must be a finite standard-normal draw")
    return z


def draw(model: str, solver: str, steps: int, grid: str = AUTO, final: str = "zero",
         n: int | None = 64, seed: int = 0, noise: str = "fresh",
         solver_opts: dict | None = None, dtype: str = "float32", device: str = "cpu",
         grid_params: dict | None = None, x_init: str | Path | None = None,
         guidance: float | None = None):
    """Sample ``n`` points; returns (x_init, solution, grid), in the ODE state's space (a latent
    model's latents; :func:`sample_to_npz` also writes their images).  ``grid``: a grid name,
    ``"auto"`` (the model's recommended grid, else karras) or ``@FILE.json``; ``grid_params``
    override the file's.  ``x_init``: a .npy file with the standard-normal draw z that replaces
    the seeded one (x_init = sigma(t_start) z); ``n`` may then be None (z's length).
    ``guidance``: the classifier-free guidance weight w of a class-conditional model (labels
    ``(seed + i) mod num_classes``, as in specs); None: unguided."""
    return _draw(model, solver, steps, grid, final, n, seed, noise, solver_opts, dtype, device,
                 grid_params, x_init, guidance=guidance)[1:]


def _draw(model, solver, steps, grid=AUTO, final="zero", n=64, seed=0, noise="fresh",
          solver_opts=None, dtype="float32", device="cpu", grid_params=None, x_init=None,
          like_diffusers=False, guidance=None):
    """:func:`draw`, and the loaded model first: (denoiser, x_init, solution, grid).  With
    ``like_diffusers`` (a ``diffusers:PATH`` model, no solver, grid, final or options given) the
    solver, grid and final are those of :mod:`samplerbench.bench.like_diffusers`; the plan is
    ``denoiser.like_diffusers``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise UserError("n", n, hint="an integer >= 1")
    if n is None and x_init is None:
        n = 64
    if noise not in NOISE_MODES:
        raise UserError("noise", noise, NOISE_MODES)
    if dtype not in DTYPES:
        raise UserError("dtype", dtype, sorted(DTYPES))
    dev = resolve_device(device)
    if like_diffusers:
        den, s, g = _like_diffusers(model, solver, steps, grid, final, solver_opts, grid_params)
    else:
        den = load_model(model)
        s = get_solver(solver, **(solver_opts or {}))
        params, source = dict(grid_params or {}), None
        if grid.startswith("@"):
            name, from_file = load_grid_file(grid, "--grid")
            grid, params, source = name, {**from_file, **params}, f"--grid {grid}"
        check_grid_spec(grid, params, den, final, source, steps=steps)
        g = make_model_grid(den, grid, steps, final=final, **params)
    reason = s.check(den, g)
    if reason:
        raise UserError(f"solver {solver!r} on model {model!r}", g.name, hint=reason)
    z = None if x_init is None else load_x_init(x_init, n, den.data_shape)
    n = n if z is None else z.shape[0]
    seeds = sample_seeds(seed, n)
    if guidance is not None:
        den = _guided(den, model, guidance, seeds)
    z = initial_noise(seeds, den.data_shape) if z is None else torch.from_numpy(z)
    x0 = (z * float(den.schedule.sigma(g.t_start))).to(device=dev, dtype=DTYPES[dtype])
    src = make_noise(noise, seeds, den.data_shape, g, dtype=x0.dtype, device=dev) \
        if s.stochastic else None
    sol = s.solve(s.make_dynamics(den), x0, g, src)
    return den, x0, sol, g


def _guided(den, model, w, seeds):
    """``den`` under classifier-free guidance weight ``w`` (the spec's rule: w >= -1, labels
    ``(seed + i) mod num_classes``)."""
    from samplerbench.models.guidance import check_weight, class_labels, guided

    w = check_weight(w, "--guidance")
    if not getattr(den, "num_classes", None):
        raise UserError("--guidance", w, hint=f"model {model!r} is not class-conditional "
                        "(no num_classes); drop --guidance")
    return guided(den, float(w), class_labels(seeds, den.num_classes))


def _like_diffusers(model, solver, steps, grid, final, solver_opts, grid_params):
    """(denoiser, solver, grid) of ``--like-diffusers``; the settings it chooses may not be
    given as well."""
    from samplerbench.bench.like_diffusers import apply, check, plan

    if not isinstance(model, str) or not model.startswith("diffusers:"):
        raise UserError("--like-diffusers", model, hint="needs a diffusers:PATH model (its "
                        "scheduler config is what is copied)")
    given = [f for f, v, default in (("solver", solver, None), ("grid", grid, AUTO),
                                     ("final", final, "zero"), ("solver_opts", solver_opts, None),
                                     ("grid_params", grid_params, None))
             if v not in (default, {}, None)]
    if given:
        raise UserError("--like-diffusers", given[0], hint="it chooses the solver, grid, final "
                        "and solver options from the scheduler config: drop " + ", ".join(given))
    check(model.split(":", 1)[1])                # an unmapped scheduler costs no model load
    den = load_model(model)
    p, g = plan(model.split(":", 1)[1], steps, den)
    s = get_solver(p.solver, **p.solver_opts)
    apply(den, p, g)
    den.like_diffusers = p
    return den, s, g


def sample_to_npz(model, solver, steps, out, **kw) -> dict:
    """Draw samples and write them to ``out`` (.npz) atomically; ``out`` is checked before the
    solve, so a bad path costs no compute.  Besides the samples, the npz records the grid used
    (``grid``: its resolved name, ``grid_params`` as JSON, ``grid_requested``: what was asked,
    e.g. "auto").  For a latent model (one with a decoder) ``x`` is the latent and ``images``
    the decoded samples (decoded once after the solve; ``decode_s`` their decoding time).
    With ``like_diffusers=True`` the npz also holds ``like_diffusers``: the plan as JSON
    (scheduler, solver, options, grid, final, timesteps, deliberate differences, the line)."""
    path = Path(out)
    if path.suffix != ".npz":
        raise UserError("--out", str(out), hint="the output file must end in .npz")
    check_out_file(path, "--out")
    den, x_init, sol, g = _draw(model, solver, steps, **kw)
    extra = {}
    if sol.status == "ok":
        images, seconds = decode_samples(den, sol.x.detach(), sol.x.device)
        if images is not None:
            extra = {"images": images.double().numpy(), "decode_s": np.float64(seconds)}
    requested = kw.get("grid", AUTO)
    if kw.get("like_diffusers"):
        requested = "like-diffusers"
        extra["like_diffusers"] = np.str_(json.dumps(den.like_diffusers.record(), default=str))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, **extra, x_init=x_init.cpu().double().numpy(),
                 x=sol.x.detach().cpu().double().numpy(), t=g.t.numpy(), nfe=np.int64(sol.nfe),
                 forward_passes=np.int64(sol.forward_passes), status=np.str_(sol.status),
                 grid=np.str_(g.name), grid_params=np.str_(json.dumps(g.params, default=str)),
                 grid_requested=np.str_(requested),
                 guidance=np.float64(np.nan if kw.get("guidance") is None else kw["guidance"]))
    info = {"n": x_init.shape[0], "nfe": sol.nfe, "status": sol.status, "grid": g.name,
            "grid_params": g.params, "decoded": "images" in extra}
    if kw.get("like_diffusers"):
        info["like_diffusers"] = den.like_diffusers
    return info
