"""``sample diffusers:PATH --like-diffusers`` against diffusers' own loop.

For each scheduler and option a tiny random-weight UNet2DModel folder is saved with that
scheduler's config; the ``sample`` code path (``bench.sample._draw(..., like_diffusers=True)``)
and diffusers' ``set_timesteps(N)`` + ``scheduler.step`` loop start from the same noise in
float32 and must agree to 1e-5 relative with the same number of network calls.  The known
defects of diffusers that --like-diffusers does not copy are compared as the module docstring of
``bench/like_diffusers.py`` states: UniPC bh1 up to the step before its NaN (then the denoise
step), DDIM with ``linspace`` spacing against diffusers' DDIM update sent to the next listed
timestep, FlowMatch against diffusers given the singly shifted sigmas.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")

from samplerbench.bench import sample as sample_mod  # noqa: E402
from samplerbench.bench.cli import main  # noqa: E402
from samplerbench.solvers.noise import FreshNoise, sample_seeds  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

REL = 1e-5
N_SAMPLES = 2
VE = {"EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
      "EulerAncestralDiscreteScheduler"}     # diffusers' sample is x / alpha (sigma space)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    path = tmp_path_factory.mktemp("unet")
    unet.save_pretrained(path)
    return path, unet.eval()


def _folder(unet_dir, tmp_path, sched):
    """A model folder: the shared UNet's files and ``sched``'s scheduler_config.json."""
    src, _ = unet_dir
    for f in src.iterdir():
        (tmp_path / f.name).symlink_to(f)
    sched.save_config(tmp_path)
    return tmp_path


def _ours(path, steps, **kw):
    den, x0, sol, g = sample_mod._draw(f"diffusers:{path}", None, steps, n=N_SAMPLES, seed=3,
                                       like_diffusers=True, **kw)
    assert sol.status == "ok"
    return den, x0, sol, g


def _theirs(unet, sched, x_vp, steps, stop=None, sigmas=None):
    """diffusers' loop from our x_init (VP state); (state in VP space, network calls)."""
    if sigmas is None:
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(sigmas=sigmas)
    ve = type(sched).__name__ in VE
    x = x_vp * math.sqrt(1 + float(sched.sigmas[0]) ** 2) if ve else x_vp.clone()
    calls = 0
    with torch.no_grad():
        for ts in sched.timesteps[:stop]:
            inp = sched.scale_model_input(x, ts) if hasattr(sched, "scale_model_input") else x
            out = unet(inp, ts).sample
            calls += 1
            x = sched.step(out, ts, x).prev_sample
    if ve:
        x = x / math.sqrt(1 + float(sched.sigmas[sched.step_index]) ** 2)
    return x, calls


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# (scheduler class, config, steps, expected solver, expected grid)
CASES = [
    ("DDIMScheduler", {}, 10, "ddim", "leading"),                    # clip_sample=True default
    ("DDIMScheduler", {"clip_sample": False, "steps_offset": 1, "prediction_type": "v_prediction",
                       "set_alpha_to_one": False}, 10, "ddim", "list"),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "prediction_type": "sample",
                       "clip_sample_range": 2.0}, 10, "ddim", "trailing"),
    ("DDIMScheduler", {"timestep_spacing": "leading", "clip_sample": False,
                       "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                       "beta_end": 0.012, "steps_offset": 1}, 7, "ddim", "leading"),
    ("DPMSolverMultistepScheduler", {}, 10, "dpmpp_2m", "list"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 10, "dpmpp_2m", "karras"),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing",
                                     "prediction_type": "v_prediction"}, 8, "dpmpp_2m",
     "trailing"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, 10, "dpmpp_2m", "list"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, 10, "dpmpp_3m", "list"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}, 12,
     "dpmpp_3m", "karras"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, 16, "dpmpp_3m", "list"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, 10,
     "dpmpp_3m", "list"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min",
                                     "timestep_spacing": "leading", "steps_offset": 1}, 9,
     "dpmpp_3m", "list"),
    ("UniPCMultistepScheduler", {}, 10, "unipc_bh2", "list"),
    ("UniPCMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}, 12, "unipc_bh2",
     "karras"),
    ("UniPCMultistepScheduler", {"final_sigmas_type": "sigma_min", "lower_order_final": False,
                                 "solver_type": "bh1"}, 10, "unipc_bh1", "list"),
    ("DEISMultistepScheduler", {}, 10, "deis", "list"),
    ("DEISMultistepScheduler", {"solver_order": 3, "timestep_spacing": "trailing"}, 12, "deis",
     "list"),
    ("EulerDiscreteScheduler", {}, 10, "ddim", "uniform"),            # integer linspace
    ("EulerDiscreteScheduler", {}, 12, "ddim", "list"),               # fractional timesteps
    ("EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1,
                                "prediction_type": "v_prediction"}, 10, "ddim", "leading"),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}, 10,
     "ddim", "list"),
    ("HeunDiscreteScheduler", {}, 8, "edm_heun", "list"),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, 8, "edm_heun", "karras"),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 10, "euler_ancestral",
     "trailing"),
]


@pytest.mark.parametrize("cls,cfg,steps,solver,grid", CASES,
                         ids=[f"{c[0][:-9]}-{i}" for i, c in enumerate(CASES)])
def test_like_diffusers_equals_diffusers_loop(unet_dir, tmp_path, cls, cfg, steps, solver,
                                              grid, monkeypatch):
    sched = getattr(diffusers, cls)(**cfg)
    path = _folder(unet_dir, tmp_path, sched)
    if cls == "EulerAncestralDiscreteScheduler":
        # diffusers draws its noise with randn_tensor: give it our stream's draws, in order
        src = FreshNoise(sample_seeds(3, N_SAMPLES), (1, 8, 8), dtype=torch.float32)
        draws = iter([src(0, 0) for _ in range(steps - 1)])
        import diffusers.schedulers.scheduling_euler_ancestral_discrete as m
        monkeypatch.setattr(m, "randn_tensor", lambda shape, **k: next(draws, torch.zeros(shape)))
    den, x0, sol, g = _ours(path, steps)
    p = den.like_diffusers
    assert (p.solver, p.grid) == (solver, grid), p.line()
    theirs, calls = _theirs(unet_dir[1], sched, x0, steps)
    assert sol.nfe == calls
    assert _rel(sol.x, theirs) < REL, p.line()


def test_ddim_clip_sample_is_diffusers_to_rounding(unet_dir, tmp_path):
    """DDIM with clip_sample (the DDIMScheduler default) agrees to 7.7e-6 in float32 (x0_hat is
    amplified 1/alpha ~ 150x at the first step); in float64 the two are the same computation."""
    sched = diffusers.DDIMScheduler()
    den, x0, sol, g = _ours(_folder(unet_dir, tmp_path, sched), 10, dtype="float64")
    assert den.like_diffusers.solver_opts == {"clip_x0": 1.0}
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    import copy
    theirs, calls = _theirs(copy.deepcopy(unet_dir[1]).double(), sched, x0, 10)
    assert sol.nfe == calls and _rel(sol.x, theirs) < 1e-12
    assert (sol.x.abs() == 1).any() and (sol.x.abs() < 1).any()      # clipping acted


# ----------------------------------------------------------------------------------------------
# deliberate differences: stop before the defect, or state the exact difference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,cfg,steps", [
    ("UniPCMultistepScheduler", {"solver_type": "bh1"}, 10),
    ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}, 8),
    ("LMSDiscreteScheduler", {}, 10),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, 12),
])
def test_last_step_into_zero_is_the_denoise_step(unet_dir, tmp_path, cls, cfg, steps):
    """UniPC bh1's last step is NaN in diffusers, LMS's is an order-4 step: both are compared
    up to the step before, followed by the denoise step."""
    sched = getattr(diffusers, cls)(**cfg)
    den, x0, sol, g = _ours(_folder(unet_dir, tmp_path, sched), steps)
    p = den.like_diffusers
    assert p.differences and ("NaN" in p.line() if "bh1" in str(cfg) else "LMS" in p.line())
    full, _ = _theirs(unet_dir[1], getattr(diffusers, cls)(**cfg), x0, steps)
    if cls.startswith("UniPC"):
        assert torch.isnan(full).all()                 # the defect is still there
    pre, calls = _theirs(unet_dir[1], sched, x0, steps, stop=steps - 1)
    theirs = den(pre, g.t[steps - 1].expand(N_SAMPLES))
    assert sol.nfe == calls + 1 == steps
    assert _rel(sol.x, theirs) < REL


def test_ddim_linspace_goes_to_the_next_listed_timestep(unet_dir, tmp_path):
    """diffusers' DDIM steps from timestep k to k - T//N; with linspace spacing the next listed
    timestep is another one.  The same update sent to k - T//N reproduces diffusers' loop, sent
    to the next listed timestep it is --like-diffusers."""
    steps = 10
    sched = diffusers.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    den, x0, sol, g = _ours(_folder(unet_dir, tmp_path, sched), steps)
    p = den.like_diffusers
    assert p.grid == "uniform" and "999 to 899" in p.line(), p.line()   # linspace(0, 999, 10)
    unet, ac = unet_dir[1], sched.alphas_cumprod

    def loop(target):
        x = x0.clone()
        ks = [int(k) for k in sched.timesteps]
        for i, k in enumerate(ks):
            eps = unet(x, k).sample
            a = ac[k]
            x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
            a1 = ac[target(i, k)] if target(i, k) >= 0 else torch.tensor(1.0)
            x = a1.sqrt() * x0_hat + (1 - a1).sqrt() * eps
        return x

    with torch.no_grad():
        theirs, _ = _theirs(unet, sched, x0, steps)
        quirk = loop(lambda i, k: k - 1000 // steps)
        listed = loop(lambda i, k: int(sched.timesteps[i + 1]) if i + 1 < steps else -1)
    assert _rel(quirk, theirs) < REL                    # the formula is diffusers'
    assert _rel(sol.x, listed) < REL                    # --like-diffusers: the next listed one
    assert _rel(sol.x, theirs) > 1e-3                   # and the quirk matters


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_single_shift(unet_dir, tmp_path, shift):
    T, steps = 1000, 10
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    den, x0, sol, g = _ours(_folder(unet_dir, tmp_path, sched), steps)
    p = den.like_diffusers
    s1 = shift * (1 / T) / (1 + (shift - 1) / T)
    assert (p.solver, p.grid, p.final) == ("euler", "shift", "zero")
    assert p.grid_params["shift"] == shift and abs(p.grid_params["t_min"] - s1) < 1e-15
    u = np.linspace(1.0, 1.0 / T, steps)
    theirs, calls = _theirs(unet_dir[1], sched, x0, steps, sigmas=u)
    assert sol.nfe == calls == steps and _rel(sol.x, theirs) < REL
    # the exact difference from diffusers' own set_timesteps(N): its last sigma is shifted twice
    sched.set_timesteps(steps)
    s2 = shift * s1 / (1 + (shift - 1) * s1)
    assert abs(float(sched.sigmas[-2]) - s2) < 1e-6 and abs(float(g.t[-2]) - s1) < 1e-12
    if shift == 1.0:
        assert not p.differences and torch.allclose(sched.sigmas.double(), g.t, rtol=1e-6)
    else:
        assert "double-shifted" in p.line()
        own, _ = _theirs(unet_dir[1], sched, x0, steps)
        assert _rel(own, sol.x) > 10 * REL


def test_dpmpp_3m_diffusers_variant_differs_from_kdiffusion_below_15_steps(unet_dir, tmp_path):
    """Below 15 steps diffusers' second-to-last 3M step is second order: the default dpmpp_3m
    (k-diffusion's) differs from diffusers there, the diffusers variant does not (checked in the
    main test); at 16 steps the mapping keeps dpmpp_3m's variant and both agree."""
    from samplerbench.solvers import get_solver

    sched = diffusers.DPMSolverMultistepScheduler(solver_order=3)
    den, x0, sol, g = _ours(_folder(unet_dir, tmp_path, sched), 10)
    assert den.like_diffusers.solver_opts == {"variant": "diffusers", "lower_order_final": True}
    k = get_solver("dpmpp_3m")
    other = k.solve(k.make_dynamics(den), x0, g)
    assert _rel(other.x, sol.x) > 10 * REL
    assert get_solver("dpmpp_3m", variant="diffusers").params() == {
        "variant": "diffusers", "lower_order_final": True}
    assert k.params() == {"variant": "k-diffusion", "lower_order_final": True}
    from samplerbench.models.errors import UserError
    with pytest.raises(UserError, match="variant=diffusers"):
        get_solver("dpmpp_3m", lower_order_final=False)


# ----------------------------------------------------------------------------------------------
# the CLI: the printed line, the npz record, refusals
# ----------------------------------------------------------------------------------------------

def test_cli_prints_and_records_the_mapping(unet_dir, tmp_path, capsys):
    sched = diffusers.UniPCMultistepScheduler(solver_type="bh1", use_karras_sigmas=True)
    (tmp_path / "m").mkdir()
    path = _folder(unet_dir, tmp_path / "m", sched)
    out = tmp_path / "x.npz"
    rc = main(["sample", f"diffusers:{path}", "--like-diffusers", "--steps", "6", "--n", "2",
               "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert ("like diffusers UniPCMultistepScheduler (set_timesteps(6)): solver unipc_bh1 "
            "solver_order=2 lower_order_final=True, grid karras rho=7, final zero") in printed
    assert "NaN" in printed and "6 NFE" in printed
    z = np.load(out)
    rec = json.loads(str(z["like_diffusers"]))
    assert rec["solver"] == "unipc_bh1" and rec["grid"] == "karras" and rec["final"] == "zero"
    assert rec["timesteps"] == [float(k) for k in
                                _sched_timesteps(diffusers.UniPCMultistepScheduler(
                                    solver_type="bh1", use_karras_sigmas=True), 6)]
    assert str(z["grid_requested"]) == "like-diffusers" and int(z["nfe"]) == 6


def _sched_timesteps(s, n):
    s.set_timesteps(n)
    return s.timesteps.tolist()


@pytest.mark.parametrize("sched,argv,needle", [
    ("PNDMScheduler", [], "scheduler _class_name"),
    ("DDIMScheduler:thresholding", [], "thresholding=True"),
    ("DPMSolverMultistepScheduler:algorithm_type", [], "algorithm_type='sde-dpmsolver++'"),
    ("DDIMScheduler", ["ddim"], "SOLVER"),
    ("DDIMScheduler", ["--grid", "karras"], "--grid"),
    ("DDIMScheduler", ["--final", "t_min"], "--final"),
])
def test_cli_refuses_with_exit_2(unet_dir, tmp_path, capsys, sched, argv, needle):
    name, _, opt = sched.partition(":")
    kw = {"thresholding": {"thresholding": True},
          "algorithm_type": {"algorithm_type": "sde-dpmsolver++"}}.get(opt, {})
    path = _folder(unet_dir, tmp_path, getattr(diffusers, name)(**kw))
    pos = [a for a in argv if not a.startswith("-") and a not in ("karras", "t_min")]
    flags = [a for a in argv if a not in pos]
    rc = main(["sample", f"diffusers:{path}", *pos, "--like-diffusers", "--steps", "4",
               *flags, "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "x.npz").exists()


def test_like_diffusers_needs_a_diffusers_model(tmp_path, capsys):
    rc = main(["sample", "gmm64-vp", "--like-diffusers", "--steps", "4", "--out",
               str(tmp_path / "x.npz")])
    assert rc == 2 and "diffusers:PATH" in capsys.readouterr().err
    rc = main(["sample", "gmm64-vp", "--steps", "4", "--out", str(tmp_path / "x.npz")])
    assert rc == 2 and "SOLVER" in capsys.readouterr().err


@pytest.mark.parametrize("key,value,needle", [
    ("solver_order", "two", "scheduler_config.json"),
    ("use_karras_sigmas", "yes", "scheduler_config.json"),
    ("timestep_spacing", "bogus", "timestep_spacing"),
])
def test_mistyped_config_values_exit_2(unet_dir, tmp_path, capsys, key, value, needle):
    """A scheduler config whose values diffusers cannot use (a string order, an unknown
    spacing) is bad input: one line naming the config, exit 2, no traceback."""
    import json

    path = _folder(unet_dir, tmp_path, diffusers.DPMSolverMultistepScheduler())
    cfg_path = path / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[key] = value
    cfg_path.write_text(json.dumps(cfg))
    rc = main(["sample", f"diffusers:{path}", "--like-diffusers", "--steps", "6",
               "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert err.count("\n") == 1
