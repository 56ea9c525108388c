"""Adapters for pretrained models (models/adapters.py) on tiny randomly initialised networks saved
to a temporary folder: the PF-ODE velocity of each adapter equals the one computed by hand from the
raw network output; a diffusers DDPM pipeline sampled with our ``ddim`` equals diffusers' own
``DDIMScheduler`` loop; code-carrying pickles are refused.  All in float64."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pickle  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from samplerbench.models.adapters import DiscreteVPSchedule, load_weights  # noqa: E402
from samplerbench.models.dynamics import ProbabilityFlowODE  # noqa: E402
from samplerbench.models.errors import UserError  # noqa: E402
from samplerbench.models.zoo import load_model  # noqa: E402

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _tiny_unet(seed=0, in_channels=1):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


@pytest.fixture(scope="module")
def ddpm_folders(tmp_path_factory):
    """DDPMPipeline folders, one per prediction type, all with the same tiny UNet."""
    out = {}
    unet = _tiny_unet()
    for ptype, beta in (("epsilon", "linear"), ("sample", "scaled_linear"),
                        ("v_prediction", "squaredcos_cap_v2")):
        path = tmp_path_factory.mktemp(f"ddpm-{ptype}")
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=ptype,
                                        beta_schedule=beta)
        diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
        out[ptype] = (path, unet.double().eval(), sched)
    return out


def _x(shape, n=3, seed=1):
    return torch.randn((n,) + tuple(shape), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# the discrete VP schedule
# ----------------------------------------------------------------------------------------------

def test_discrete_schedule_nodes_inverse_and_derivatives():
    ac = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    s = DiscreteVPSchedule(ac)
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    tk = (k + 1).double() / 1000
    assert torch.allclose(s.alpha(tk) ** 2, ac[k], rtol=1e-12)
    assert torch.allclose(s.alpha(tk) ** 2 + s.sigma(tk) ** 2, torch.ones(6, dtype=torch.float64))
    assert torch.equal(s.timestep(tk), k.double())
    t = torch.tensor([2e-4, 7e-4, 0.0013, 0.25031, 0.6003, 0.99951], dtype=torch.float64)
    assert torch.allclose(s.t_from_ratio(s.ratio(t)), t, rtol=1e-10, atol=0)
    # exact derivatives away from the nodes (lambda is piecewise linear in t)
    h = 1e-7
    for fn, dfn in ((s.alpha, s.d_alpha), (s.sigma, s.d_sigma)):
        fd = (fn(t + h) - fn(t - h)) / (2 * h)
        assert torch.allclose(dfn(t), fd, rtol=1e-5, atol=1e-9)
    assert float(s.ratio(torch.tensor(0.0, dtype=torch.float64))) == 0.0


def test_discrete_schedule_rejects_bad_tables():
    with pytest.raises(UserError, match="alphas_cumprod"):
        DiscreteVPSchedule([0.5, 0.9])


# ----------------------------------------------------------------------------------------------
# diffusers UNet2DModel / DDPMPipeline
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
def test_diffusers_unet_velocity_by_hand(ddpm_folders, ptype):
    path, unet, sched = ddpm_folders[ptype]
    den = load_model(f"diffusers:{path}")
    assert den.data_shape == (1, 8, 8)
    N = 1000
    ac = sched.alphas_cumprod.double()
    lam = torch.log(ac / (1 - ac))
    t = torch.tensor([0.0123456, 0.4004, 0.97777], dtype=torch.float64)
    x = _x((1, 8, 8))
    u = t * N - 1                                         # fractional timestep
    k = u.floor().long()
    lt = lam[k] + (u - k) * (lam[k + 1] - lam[k])
    dl = (lam[k + 1] - lam[k]) * N
    a, s = torch.sigmoid(lt).sqrt(), torch.sigmoid(-lt).sqrt()
    da, ds = 0.5 * a * s**2 * dl, -0.5 * s * a**2 * dl
    a, s, da, ds = (c[:, None, None, None] for c in (a, s, da, ds))
    with torch.no_grad():
        raw = unet(x, u).sample
    if ptype == "epsilon":
        x0, eps = (x - s * raw) / a, raw
    elif ptype == "sample":
        x0, eps = raw, (x - a * raw) / s
    else:
        x0, eps = a * x - s * raw, s * x + a * raw
    v_hand = da * x0 + ds * eps
    v = ProbabilityFlowODE(den).velocity(t, x)
    assert torch.allclose(v, v_hand, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ptype,steps", [("epsilon", 10), ("v_prediction", 25)])
def test_diffusers_ddim_matches_ddim_scheduler(ddpm_folders, ptype, steps):
    from samplerbench.solvers import Grid, get_solver

    path, unet, _ = ddpm_folders[ptype]
    den = load_model(f"diffusers:{path}")
    cfg = diffusers.DDIMScheduler.load_config(path / "scheduler")
    s = diffusers.DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=True)
    s.set_timesteps(steps)
    s.alphas_cumprod = s.alphas_cumprod.to(torch.float64)
    s.final_alpha_cumprod = s.final_alpha_cumprod.to(torch.float64)
    x_init = _x((1, 8, 8), n=4, seed=7)
    x = x_init.clone()
    for ts in s.timesteps:
        with torch.no_grad():
            out = unet(x, ts).sample
        x = s.step(out, ts, x).prev_sample
    t = (s.timesteps.double() + 1) / 1000
    grid = Grid(t=torch.cat([t, t.new_zeros(1)]), name="list", final="zero")
    solver = get_solver("ddim")
    sol = solver.solve(solver.make_dynamics(den), x_init, grid)
    assert sol.nfe == steps
    rel = float((sol.x - x).norm() / x.norm())
    assert rel < 1e-4, rel


def test_diffusers_model_folder_with_scheduler_config(ddpm_folders):
    # the unet/ subfolder of a pipeline finds ../scheduler/scheduler_config.json
    path, _, _ = ddpm_folders["epsilon"]
    den = load_model(f"diffusers:{path / 'unet'}")
    assert den.prediction == "eps"


def test_diffusers_flow_transformer_velocity_by_hand(tmp_path):
    torch.manual_seed(0)
    tr = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    tr.save_pretrained(tmp_path / "transformer")
    sched.save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", '
        '"SD3Transformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}')
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
            "pooled_projections": torch.randn(1, 8, generator=g)}
    save_file(cond, str(tmp_path / "cond.safetensors"))

    den = load_model(f"diffusers:{tmp_path}")
    assert den.schedule.name == "rf" and den.prediction == "velocity"
    assert den.shift == 3.0 and den.recommended_grid == ("shift", {"shift": 3.0})
    assert den.data_shape == (4, 8, 8)
    x = _x((4, 8, 8), n=2)
    t = torch.tensor([1.0, 0.3141], dtype=torch.float64)
    tr64 = tr.double().eval()
    with torch.no_grad():
        raw = tr64(hidden_states=x, timestep=t * 1000,
                   encoder_hidden_states=cond["encoder_hidden_states"].double().expand(2, 5, 16),
                   pooled_projections=cond["pooled_projections"].double().expand(2, 8)).sample
    v = ProbabilityFlowODE(den).velocity(t, x)
    assert torch.allclose(v, raw, rtol=1e-9, atol=1e-9)


def test_diffusers_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_model(f"diffusers:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="model_index.json"):
        load_model(f"diffusers:{tmp_path}")
    _tiny_unet().save_pretrained(tmp_path / "lonely")
    with pytest.raises(UserError, match="scheduler_config.json"):
        load_model(f"diffusers:{tmp_path / 'lonely'}")


# ----------------------------------------------------------------------------------------------
# EDM / k-diffusion and flow_matching / torchcfm callables
# ----------------------------------------------------------------------------------------------

_USER_MODULE = textwrap.dedent('''
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g))
            self.c = torch.nn.Parameter(torch.randn(3, generator=g))

        def raw(self, x, s):
            return torch.tanh(x @ self.w) * torch.log1p(s)[:, None] + self.c * s[:, None]

    class EDMNet(Net):          # D(x, sigma) as NVlabs EDM / k-diffusion: x, sigma first
        sigma_min, sigma_max = 0.01, 50.0
        def forward(self, x, sigma, class_labels=None):
            return self.raw(x, sigma)

    class CFMNet(Net):          # torchcfm / torchdyn: forward(t, x)
        def forward(self, t, x):
            return self.raw(x, t)

    class FMNet(Net):           # flow_matching: forward(x, t, **extras)
        def forward(self, x, t, **extras):
            return self.raw(x, t)

    def make_edm():
        return EDMNet()
''')


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "mynets.py"
    path.write_text(_USER_MODULE)
    return path


def test_edm_callable_velocity_by_hand(user_module):
    den = load_model(f"edm:{user_module}:make_edm?shape=3")
    assert den.schedule.name == "edm" and den.data_shape == (3,)
    assert den.t_min == 0.01 and den.t_max == 50.0          # from the network's attributes
    net = den.net.conv.net
    x, sigma = _x((3,), n=4), torch.tensor([0.02, 0.5, 3.0, 50.0], dtype=torch.float64)
    with torch.no_grad():
        d = net.double()(x, sigma)
    v_hand = (x - d) / sigma[:, None]                         # EDM: dx/dsigma = (x - D) / sigma
    assert torch.allclose(ProbabilityFlowODE(den).velocity(sigma, x), v_hand, rtol=1e-10,
                          atol=1e-12)


@pytest.mark.parametrize("name,order", [("CFMNet", "tx"), ("FMNet", "xt")])
def test_flow_callable_velocity_by_hand(user_module, name, order):
    den = load_model(f"flow:{user_module}:{name}?shape=3")
    assert den.source["signature"] == order
    net = den.net.conv.net
    x, t = _x((3,), n=4), torch.tensor([1.0, 0.7, 0.25, 0.003], dtype=torch.float64)
    with torch.no_grad():
        u = net.double().raw(x, 1.0 - t)                      # their time s = 1 - t
    assert torch.allclose(ProbabilityFlowODE(den).velocity(t, x), -u, rtol=1e-10, atol=1e-12)


def test_callable_spec_errors(user_module):
    with pytest.raises(UserError, match="shape"):
        load_model(f"flow:{user_module}:FMNet")
    with pytest.raises(UserError, match="no attribute"):
        load_model(f"edm:{user_module}:nothing?shape=3")
    with pytest.raises(UserError, match="option"):
        load_model(f"edm:{user_module}:make_edm?colour=red")
    with pytest.raises(UserError, match="signature"):
        load_model(f"flow:{user_module}:FMNet?shape=3&signature=yx")


# ----------------------------------------------------------------------------------------------
# safety: pickles that would run code are refused
# ----------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_files(tmp_path):
    marker = tmp_path / "pwned"
    a = tmp_path / "network-snapshot.pkl"
    with open(a, "wb") as f:
        pickle.dump({"ema": _Evil(marker)}, f)
    b = tmp_path / "model.pt"
    torch.save({"state_dict": _Evil(marker)}, b)
    return marker, [a, b]


def test_malicious_pickle_is_refused(tmp_path):
    marker, files = _evil_files(tmp_path)
    for f in files:
        with pytest.raises(UserError, match="refusing to unpickle"):
            load_weights(f)
        with pytest.raises(UserError, match="refusing to unpickle"):
            load_model(f"edm:{f}")
    assert not marker.exists()
    # a plain state dict is fine
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_weights(good)["w"], torch.ones(2))


def test_diffusers_folder_with_malicious_bin_is_refused(tmp_path, ddpm_folders):
    import shutil

    src, _, _ = ddpm_folders["epsilon"]
    dst = tmp_path / "pipe"
    shutil.copytree(src, dst)
    marker = tmp_path / "pwned"
    (dst / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": _Evil(marker)}, dst / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_model(f"diffusers:{dst}")
    assert not marker.exists()
