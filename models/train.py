"""Training recipes for the shipped checkpoints, and ``train(name)`` that reproduces one.

Losses (x_t = alpha(t) x0 + sigma(t) eps, eps ~ N(0, I)):
  ``*-vp``  eps-prediction under ``vp-linear``: E ||net(x_t, t) - eps||^2, t ~ U(1e-3, 1)
            (Ho et al. 2020, continuous time as in Song et al. 2021)
  ``*-rf``  velocity under ``rf`` (alpha = 1 - t, sigma = t): E ||net(x_t, t) - (eps - x0)||^2,
            t ~ U(0, 1) (Liu et al. 2022; Lipman et al. 2023)
  ``digits-cond-rf``  the rf loss with class labels, replaced by the null label with probability
            0.1 (Ho & Salimans 2022, classifier-free guidance)
  ``digits-ae``  the autoencoder of the latent models (Rombach et al. 2022, KL-regularised):
            E ||decode(z) - x||^2 + beta KL(q(z | x) || N(0, I)) / dim(x), z ~ q(z | x) by
            reparametrisation; then ``shift_factor`` / ``scaling_factor`` = the mean / 1 over the
            standard deviation of the posterior means of the training digits
  ``digits-latent-*``  the vp / rf losses above on the scaled latents
            ``(mean(q(z | x)) - shift_factor) * scaling_factor`` of the digits-ae encoder

Adam with linear warm-up and cosine decay; the shipped weights are an exponential moving average
(decay 0.999).  The validation loss is the same loss of the EMA weights on held-out data with fixed
(t, eps) draws: 10,000 fresh points for the 2-D toys, the 180 held-out digits x 8 draws for digits.

Everything random comes from ``seed`` (network init via ``torch.manual_seed``, batches and noise
from one ``torch.Generator``).  On the same torch build, CPU type and thread count (1, the default)
a rerun reproduces the shipped weights bit for bit; other thread counts or CPUs differ by float32
rounding only.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from samplerbench.models.errors import UserError
from samplerbench.models.nets import CHECKPOINT_DIR, build_net, load_autoencoder, n_params  # noqa: F401

Tensor = torch.Tensor


@dataclass(frozen=True)
class Recipe:
    data: str                      # a models.data toy name or "digits"
    schedule: str                  # "vp-linear" | "rf"
    prediction: str                # "eps" | "velocity"
    net: dict
    steps: int
    batch: int
    lr: float
    data_shape: tuple[int, ...]
    conditional: bool = False
    p_uncond: float = 0.1
    warmup: int = 200
    ema: float = 0.999
    description: str = ""
    extra: dict = field(default_factory=dict)


_MLP = {"arch": "mlp", "dim": 2, "hidden": 192, "depth": 4, "emb": 64}
_UNET = {"arch": "unet", "in_channels": 1, "channels": [16, 32, 64], "emb": 64}
_TOY = dict(steps=12000, batch=512, lr=1e-3, data_shape=(2,))
_DIG = dict(steps=6000, batch=128, lr=1e-3, data_shape=(1, 8, 8))
_AE = {"arch": "ae", "in_channels": 1, "latent_channels": 2, "hidden": 64}
_LAT_UNET = {"arch": "unet", "in_channels": 2, "channels": [32, 64], "emb": 64}
_LAT = dict(steps=6000, batch=128, lr=1e-3, data_shape=(2, 4, 4),
            extra={"decoder": "digits-ae"})

RECIPES: dict[str, Recipe] = {
    "moons-vp": Recipe("moons", "vp-linear", "eps", _MLP, **_TOY),
    "moons-rf": Recipe("moons", "rf", "velocity", _MLP, **_TOY),
    "checkerboard-vp": Recipe("checkerboard", "vp-linear", "eps", _MLP, **_TOY),
    "checkerboard-rf": Recipe("checkerboard", "rf", "velocity", _MLP, **_TOY),
    "digits-vp": Recipe("digits", "vp-linear", "eps", _UNET, **_DIG),
    "digits-rf": Recipe("digits", "rf", "velocity", _UNET, **_DIG),
    "digits-cond-rf": Recipe("digits", "rf", "velocity", {**_UNET, "num_classes": 10},
                             conditional=True, **_DIG),
    "digits-ae": Recipe("digits", "none", "reconstruction", _AE, steps=3000, batch=128, lr=2e-3,
                        data_shape=(1, 8, 8), extra={"beta": 1e-3}),
    "digits-latent-vp": Recipe("digits-latent", "vp-linear", "eps", _LAT_UNET, **_LAT),
    "digits-latent-rf": Recipe("digits-latent", "rf", "velocity", _LAT_UNET, **_LAT),
}


TRAINABLE = tuple(sorted(RECIPES))       # names `samplerbench train NAME` reproduces


def available_recipes() -> list[str]:
    return sorted(RECIPES)


# ----------------------------------------------------------------------------------------------

def _data(recipe: Recipe, seed: int):
    """(x_train, y_train | None, x_val, y_val | None)."""
    from samplerbench.models import data

    if recipe.data == "digits":
        (xt, yt), (xv, yv) = data.digits_split()
        return xt, yt, xv, yv
    if recipe.data == "digits-latent":   # pragma: no cover
        raise AssertionError("latent data come from _latent_data")
    return (data.toy_2d(recipe.data, 200_000, seed=seed), None,
            data.toy_2d(recipe.data, 10_000, seed=seed + 10_000), None)


def _latent_data(recipe: Recipe, ae_dir: Path):
    """The digits split encoded by the recipe's autoencoder (posterior means, scaled):
    (z_train, y_train, z_val, y_val, ae_card)."""
    from samplerbench.models import data
    from samplerbench.models.nets import load_autoencoder

    name = recipe.extra["decoder"]
    if not (ae_dir / f"{name}.json").is_file():
        raise UserError("decoder", name, hint=f"a latent model is trained on the latents of "
                        f"{name!r}, which is not in {ae_dir}; run `samplerbench train {name}"
                        + (f" --out {ae_dir}`" if ae_dir != CHECKPOINT_DIR else "`") + " first")
    ae, card = load_autoencoder(name, ae_dir)
    (xt, yt), (xv, yv) = data.digits_split()
    with torch.no_grad():
        zt, zv = (ae.encode(x)[0] for x in (xt, xv))
    scale, shift = card["scaling_factor"], card["shift_factor"]
    return (zt - shift) * scale, yt, (zv - shift) * scale, yv, card


def _loss(net, recipe: Recipe, sched, x0: Tensor, y: Tensor | None, t: Tensor,
          eps: Tensor) -> Tensor:
    from samplerbench.models.conversions import expand_like

    a, s = expand_like(sched.alpha(t).float(), x0), expand_like(sched.sigma(t).float(), x0)
    xt = a * x0 + s * eps
    target = eps if recipe.prediction == "eps" else eps - x0
    out = net(xt, t.float(), y) if y is not None else net(xt, t.float())
    return (out - target).pow(2).flatten(1).mean(1)


def _draw_t(recipe: Recipe, n: int, g: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=g, dtype=torch.float64)
    if recipe.schedule == "vp-linear":
        return 1e-3 + (1.0 - 1e-3) * u
    return u


def _val_loss(net, recipe: Recipe, sched, xv: Tensor, yv: Tensor | None) -> float:
    g = torch.Generator().manual_seed(1234)
    reps = 8 if recipe.data.startswith("digits") else 1
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(reps):
            for i in range(0, len(xv), 2048):
                x0 = xv[i:i + 2048]
                y = yv[i:i + 2048] if (yv is not None and recipe.conditional) else None
                t = _draw_t(recipe, len(x0), g)
                eps = torch.randn(x0.shape, generator=g)
                total += float(_loss(net, recipe, sched, x0, y, t, eps).sum())
                count += len(x0)
    return total / count


def _start(recipe: Recipe, seed: int):
    """(network, its EMA copy, Adam, the batch/noise generator), all from ``seed``."""
    torch.manual_seed(seed)
    net = build_net(recipe.net)
    ema = build_net(recipe.net)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    return net, ema, opt, torch.Generator().manual_seed(seed)


def _set_lr(opt, recipe: Recipe, step: int, n_steps: int) -> None:
    """Linear warm-up, then cosine decay to 0.1 x the peak."""
    lr = recipe.lr * min(1.0, (step + 1) / recipe.warmup) * (
        0.55 + 0.45 * math.cos(math.pi * step / n_steps))
    for group in opt.param_groups:
        group["lr"] = lr


def _ema_step(ema, net, recipe: Recipe, step: int) -> None:
    decay = min(recipe.ema, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(ema.buffers(), net.buffers()):
            be.copy_(b)


def _update(opt, loss, ema, net, recipe: Recipe, step: int, run_loss):
    """One optimiser step and EMA update; returns the running mean of the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _ema_step(ema, net, recipe, step)
    lv = loss.item()
    return lv if run_loss is None else 0.99 * run_loss + 0.01 * lv


def _progress(log, name: str, step: int, n_steps: int, run_loss: float, t_start: float,
              digits: int) -> None:
    if log and (step + 1) % max(1, n_steps // 10) == 0:
        log(f"{name}: step {step + 1}/{n_steps} loss {run_loss:.{digits}f} "
            f"({time.perf_counter() - t_start:.0f} s)")


def train(name: str, out_dir: str | Path | None = None, seed: int = 0, steps: int | None = None,
          threads: int = 1, log: Callable[[str], None] | None = print) -> Path:
    """Train the recipe ``name`` from ``seed``; write ``NAME.safetensors`` and the model card
    ``NAME.json`` to ``out_dir`` (default: ``models/checkpoints/``, overwriting the shipped one).

    ``steps`` overrides the recipe's step count (a quick run).  ``threads`` is the torch intra-op
    thread count (the shipped weights used 1; the conv nets' float32 rounding, and so their
    weights' bits, depend on it).  Returns the model-card path."""
    from safetensors.torch import save_file

    from samplerbench.models.schedules import make_schedule

    if name not in RECIPES:
        raise UserError("model to train", name, available_recipes())
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError("steps", steps, hint="an integer >= 1")
    recipe = RECIPES[name]
    n_steps = int(steps or recipe.steps)
    out = Path(out_dir) if out_dir is not None else CHECKPOINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    if recipe.net["arch"] == "ae":
        return _train_autoencoder(name, recipe, out, seed, n_steps, threads, log)
    ae_card = None

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        t_start = time.perf_counter()
        sched = make_schedule(recipe.schedule)
        if recipe.data == "digits-latent":
            xt, yt, xv, yv, ae_card = _latent_data(recipe, out)
        else:
            xt, yt, xv, yv = _data(recipe, seed)
        net, ema, opt, g = _start(recipe, seed)
        run_loss = None
        for step in range(n_steps):
            _set_lr(opt, recipe, step, n_steps)
            idx = torch.randint(0, len(xt), (recipe.batch,), generator=g)
            x0 = xt[idx]
            y = None
            if recipe.conditional:
                y = yt[idx].clone()
                drop = torch.rand(recipe.batch, generator=g) < recipe.p_uncond
                y[drop] = recipe.net["num_classes"]
            t = _draw_t(recipe, recipe.batch, g)
            eps = torch.randn(x0.shape, generator=g)
            loss = _loss(net, recipe, sched, x0, y, t, eps).mean()
            run_loss = _update(opt, loss, ema, net, recipe, step, run_loss)
            _progress(log, name, step, n_steps, run_loss, t_start, 4)
        val = _val_loss(ema, recipe, sched, xv, yv)
        train_s = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(old_threads)

    weights = out / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in ema.state_dict().items()}
    save_file(state, str(weights))      # no metadata: its key order is not deterministic
    card = {
        "name": name,
        "weights": weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "weights_bytes": weights.stat().st_size,
        "data": recipe.data,
        "data_shape": list(recipe.data_shape),
        "schedule": recipe.schedule,
        "prediction": recipe.prediction,
        "loss": _LOSS_TEXT[(recipe.prediction, recipe.conditional)],
        "net": dict(recipe.net),
        "n_params": n_params(ema),
        "recipe": {k: v for k, v in asdict(recipe).items()
                   if k not in ("net", "data", "schedule", "prediction", "description", "extra",
                                "data_shape")},
        "steps": n_steps,
        "seed": seed,
        "final_train_loss": run_loss,
        "final_val_loss": val,
        "val_data": ("180 held-out digits (models.data.digits_split) x 8 (t, eps) draws"
                     if recipe.data.startswith("digits") else "10,000 fresh samples, seed + 10000"),
        "train_seconds": round(train_s, 1),
        "threads": max(1, int(threads)),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "command": f"samplerbench train {name}",
    }
    if ae_card is not None:        # a latent model: the state is the scaled latent of ae_card
        card["data"] = "digits"
        card["latent"] = True
        card["decoder"] = ae_card["name"]
        card["decoder_sha256"] = ae_card["weights_sha256"]
        card["decoded_shape"] = list(ae_card["data_shape"])
        card["val_data"] = ("the latents (posterior means, scaled) of the 180 held-out digits "
                            "(models.data.digits_split) x 8 (t, eps) draws")
    path = out / f"{name}.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    if log:
        log(f"{name}: val loss {val:.4f}, {train_s:.0f} s -> {weights} "
            f"({card['weights_bytes'] / 1e6:.2f} MB)")
    return path


def _train_autoencoder(name: str, recipe: Recipe, out: Path, seed: int, n_steps: int,
                       threads: int, log) -> Path:
    """Train the digits autoencoder (see the module docstring); its card records the
    reconstruction error on the held-out digits and the latent's shift / scaling factors."""
    from safetensors.torch import save_file

    from samplerbench.models import data

    beta = float(recipe.extra["beta"])
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        t_start = time.perf_counter()
        (xt, _), (xv, _) = data.digits_split()
        net, ema, opt, g = _start(recipe, seed)
        dim = float(xt[0].numel())
        run_loss = None
        for step in range(n_steps):
            _set_lr(opt, recipe, step, n_steps)
            x = xt[torch.randint(0, len(xt), (recipe.batch,), generator=g)]
            mean, logvar = net.encode(x)
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)
            rec = (net.decode(z) - x).pow(2).mean()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
            loss = rec + beta * kl / dim
            run_loss = _update(opt, loss, ema, net, recipe, step, run_loss)
            _progress(log, name, step, n_steps, run_loss, t_start, 5)
        with torch.no_grad():
            mt, _ = ema.encode(xt)
            mv, lvv = ema.encode(xv)
            err_v = (ema.decode(mv) - xv).pow(2).flatten(1).mean(1)
            err_t = (ema.decode(mt) - xt).pow(2).flatten(1).mean(1)
            max_abs_v = float((ema.decode(mv) - xv).abs().max())
        train_s = time.perf_counter() - t_start
    finally:
        torch.set_num_threads(old_threads)

    weights = out / f"{name}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()}, str(weights))
    shift = float(mt.double().mean())
    scale = float(1.0 / mt.double().std())
    latent_shape = list(mt.shape[1:])
    mse_v = float(err_v.double().mean())
    card = {
        "name": name,
        "weights": weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "weights_bytes": weights.stat().st_size,
        "data": recipe.data,
        "data_shape": list(recipe.data_shape),
        "latent_shape": latent_shape,
        "compression": round(float(xt[0].numel()) / float(mt[0].numel()), 3),
        "scaling_factor": scale,
        "shift_factor": shift,
        "loss": (f"E ||decode(z) - x||^2 + {beta:g} KL(q(z|x) || N(0, I)) / {int(dim)}, "
                 "z ~ q(z|x) (reparametrised)"),
        "net": dict(recipe.net),
        "n_params": n_params(ema),
        "recipe": {k: v for k, v in asdict(recipe).items()
                   if k in ("steps", "batch", "lr", "warmup", "ema")} | {"beta": beta},
        "steps": n_steps,
        "seed": seed,
        "final_train_loss": run_loss,
        "reconstruction": {
            "what": "decode(mean of q(z|x)) against x, pixels in [-1, 1]",
            "val_mse": mse_v,
            "val_rms": mse_v ** 0.5,
            "val_psnr_db": 10.0 * math.log10(4.0 / mse_v),
            "val_max_abs": None,      # set below
            "train_mse": float(err_t.double().mean()),
            "val_data": "180 held-out digits (models.data.digits_split)",
        },
        "posterior_std_mean": float((0.5 * lvv).exp().double().mean()),
        "train_seconds": round(train_s, 1),
        "threads": max(1, int(threads)),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "command": f"samplerbench train {name}",
    }
    card["reconstruction"]["val_max_abs"] = max_abs_v
    path = out / f"{name}.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    if log:
        log(f"{name}: held-out reconstruction rms {mse_v ** 0.5:.4f} "
            f"(PSNR {card['reconstruction']['val_psnr_db']:.1f} dB), {train_s:.0f} s -> {weights}")
    return path


_LOSS_TEXT = {
    ("eps", False): "E ||eps_hat(x_t, t) - eps||^2, x_t = alpha x0 + sigma eps, vp-linear, "
                    "t ~ U(1e-3, 1)",
    ("velocity", False): "E ||v_hat(x_t, t) - (eps - x0)||^2, x_t = (1 - t) x0 + t eps, "
                         "t ~ U(0, 1)",
    ("velocity", True): "E ||v_hat(x_t, t, y) - (eps - x0)||^2, x_t = (1 - t) x0 + t eps, "
                        "t ~ U(0, 1), label y replaced by the null class (10) with p = 0.1",
}


def preview(name: str, out_png: str | Path, steps: int = 64, solver: str = "heun",
            grid: str = "karras", n: int | None = None, seed: int = 0,
            guidance: float | None = None) -> Path:
    """The visual check of a model: ``n`` samples (``solver``, ``steps``, float32) drawn to a PNG:
    a scatter over the training data for 2-D models, an image grid for 8x8 digits (one column per
    class, labels ``seed + i mod 10``, for a class-conditional model with ``guidance`` = w).  A
    latent model's samples are decoded first (gray or RGB images in [-1, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from samplerbench.models.guidance import class_labels, guided
    from samplerbench.models.zoo import load_model
    from samplerbench.solvers import get_solver, initial_noise, make_grid

    den = load_model(name)
    n = n or (2000 if den.data_shape == (2,) else 100)
    seeds = list(range(seed, seed + n))
    labels = None
    if getattr(den, "num_classes", None) and guidance is not None:
        labels = class_labels(seeds, den.num_classes)
        den = guided(den, guidance, labels)
    s = get_solver(solver)
    g = make_grid(grid, den.schedule, steps)
    x = initial_noise(seeds, den.data_shape) * float(den.schedule.sigma(g.t[0]))
    x = s.solve(s.make_dynamics(den), x.float(), g).x
    if getattr(den, "decoder", None) is not None:        # a latent model: show its images
        from samplerbench.bench.decode import decode_samples

        x = decode_samples(den, x)[0]
    x = x.double().numpy()
    title = f"{name}: {solver}, {steps} steps, {grid} grid" + (
        f", w = {guidance:g}" if labels is not None else "")
    if den.data_shape == (2,):
        from samplerbench.models import data

        card = getattr(den, "card", {})
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        if card.get("data") in data.TOYS:
            ref = data.toy_2d(card["data"], n, seed=10_000 + seed).numpy()
            axes[0].scatter(ref[:, 0], ref[:, 1], s=1, c="gray")
            axes[0].set_title("training data")
        axes[1].scatter(x[:, 0], x[:, 1], s=1)
        axes[1].set_title("samples")
        for a in axes:
            a.set_xlim(-3, 3)
            a.set_ylim(-3, 3)
            a.set_aspect("equal")
    else:
        cols = 10
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.6 + 0.4))
        for i, a in enumerate(axes.flat):
            if i < n and x.ndim == 4 and x.shape[1] == 3:         # RGB in [-1, 1]
                a.imshow(((x[i].transpose(1, 2, 0) + 1) / 2).clip(0, 1))
            elif i < n:
                a.imshow(x[i].reshape(x.shape[-2], x.shape[-1]), cmap="gray", vmin=-1, vmax=1)
            a.axis("off")
    fig.suptitle(title, fontsize=9)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
