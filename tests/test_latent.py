"""Latent models (issue 14): a diffusers folder with a ``vae/`` subfolder is a latent model whose
decoder is diffusers' own ``vae.decode(z / scaling_factor + shift_factor)``; ``sample`` writes the
decoded ``images`` beside the latent ``x``; ``run`` records ``decode_s`` and ``metric_space``; the
decoder is never called during a solve; a VAE that does not fit, or a broken ``vae/``, exits 2.
Tiny randomly initialised networks in temporary folders; nothing is downloaded."""

from __future__ import annotations

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from samplerbench.bench.cli import main  # noqa: E402
from samplerbench.models.zoo import load_model  # noqa: E402

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

LATENT = 4                     # latent spatial size; the VAE downsamples 2x: 8x8 RGB images
# (channels, scaling_factor, shift_factor): SD-like 4 channels and SD3/Flux-like 16 channels
VAES = {4: (0.18215, 0.1), 16: (1.5305, 0.0609)}


def _unet(channels: int, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=LATENT, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def _vae(channels: int, scaling: float, shift: float | None, seed: int = 1):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=2 * LATENT,
        scaling_factor=scaling, shift_factor=shift)


def _folder(path, unet_channels: int, vae_channels: int | None, shift="default"):
    """A latent pipeline folder: model_index.json, unet/, scheduler/ and (optionally) vae/."""
    path.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    _unet(unet_channels).save_pretrained(path / "unet")
    # x0 prediction: a random network gives bounded samples (no blow-up verdict in run)
    diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="sample").save_pretrained(
        path / "scheduler")
    if vae_channels is not None:
        scaling, default_shift = VAES.get(vae_channels, (0.5, 0.0))
        _vae(vae_channels, scaling, default_shift if shift == "default" else shift
             ).save_pretrained(path / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    return {c: _folder(root / f"c{c}", c, c) for c in VAES}


def _exits_2(capsys, args, *needles) -> str:
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ----------------------------------------------------------------------------------------------
# the decoder is diffusers' own decode
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", sorted(VAES))
def test_decode_equals_diffusers_vae_decode(folders, channels):
    den = load_model(f"diffusers:{folders[channels]}")
    scaling, shift = VAES[channels]
    assert den.data_shape == (channels, LATENT, LATENT)          # the state is the latent
    dec = den.decoder
    assert dec is not None and dec.data_shape == (3, 2 * LATENT, 2 * LATENT)
    assert (dec.scaling_factor, dec.shift_factor) == (scaling, shift)
    assert den.source["vae"] == {"class": "AutoencoderKL", "scaling_factor": scaling,
                                 "shift_factor": shift}
    vae = diffusers.AutoencoderKL.from_pretrained(folders[channels] / "vae").eval()
    z = torch.randn(3, channels, LATENT, LATENT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample
    ours = den.decode(z)
    assert ours.shape == (3, 3, 2 * LATENT, 2 * LATENT) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # a float64 state is decoded in the VAE's dtype (float32): the same images
    torch.testing.assert_close(den.decode(z.double()), ref, rtol=0, atol=1e-6)
    # a model without a decoder decodes to its state
    den.decoder = None
    assert den.decode(z) is z


def test_shift_factor_defaults_to_zero(tmp_path):
    """SD / SDXL VAE configs have no shift_factor (or null): decode(z / scaling_factor)."""
    path = _folder(tmp_path / "sd", 4, 4, shift=None)
    cfg = json.loads((path / "vae" / "config.json").read_text())
    cfg.pop("shift_factor", None)
    (path / "vae" / "config.json").write_text(json.dumps(cfg))
    den = load_model(f"diffusers:{path}")
    assert den.decoder.shift_factor == 0.0
    vae = diffusers.AutoencoderKL.from_pretrained(path / "vae").eval()
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = vae.decode(z / vae.config.scaling_factor).sample
    torch.testing.assert_close(den.decode(z), ref, rtol=0, atol=1e-6)


def test_folder_without_vae_has_no_decoder(tmp_path):
    den = load_model(f"diffusers:{_folder(tmp_path / 'plain', 4, None)}")
    assert den.decoder is None and "vae" not in den.source


# ----------------------------------------------------------------------------------------------
# sample and run
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", sorted(VAES))
def test_sample_writes_latents_and_images(folders, channels, tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert main(["sample", f"diffusers:{folders[channels]}", "euler", "--steps", "3", "--n", "2",
                 "--out", str(out)]) == 0
    assert "decoded images" in capsys.readouterr().out
    with np.load(out) as f:
        x, images, nfe = f["x"], f["images"], int(f["nfe"])
        assert f["decode_s"] >= 0
    assert nfe == 3
    assert x.shape == (2, channels, LATENT, LATENT)
    assert images.shape == (2, 3, 2 * LATENT, 2 * LATENT)
    den = load_model(f"diffusers:{folders[channels]}")
    again = den.decode(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(images, again, rtol=0, atol=1e-6)


def test_sample_without_decoder_writes_no_images(tmp_path):
    path = _folder(tmp_path / "plain", 4, None)
    out = tmp_path / "x.npz"
    assert main(["sample", f"diffusers:{path}", "euler", "--steps", "2", "--n", "1",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert "images" not in f.files and f["x"].shape == (1, 4, LATENT, LATENT)


def test_run_records_decode_time_and_metric_space(folders, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--models", f"diffusers:{folders[4]}", "--solvers", "euler",
                 "--steps", "3", "--samples", "4", "--out", str(out), "--quiet"]) == 0
    (row,) = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert row["status"] == "ok", row["message"]
    assert row["nfe"] == 3
    assert row["metric_space"] == "decoded"
    assert isinstance(row["decode_s"], float) and row["decode_s"] >= 0
    assert row["wall_s"] is not None


def test_run_without_decoder_records_state_space(tmp_path):
    from samplerbench.bench.runner import run_spec
    from samplerbench.bench.spec import parse_spec

    spec = parse_spec({"models": ["gmm2d"], "solvers": ["euler"], "steps": [4], "samples": 16,
                       "threads": 1, "timing": {"warmup": 0, "repeats": 1},
                       "metrics": {"nonconv": False}})
    run_spec(spec, tmp_path / "r", progress=False)
    (row,) = [json.loads(line) for line in (tmp_path / "r" / "rows.jsonl").read_text()
              .splitlines()]
    assert row["metric_space"] == "state" and row["decode_s"] is None
    assert row["swd"] is not None                     # the metrics themselves are unchanged


# ----------------------------------------------------------------------------------------------
# the decoder costs nothing during solving
# ----------------------------------------------------------------------------------------------

class _CountingDecoder(torch.nn.Module):
    """Wraps a decoder; records, per call, the batch size and how many model calls came before."""

    def __init__(self, inner, model_calls: list):
        super().__init__()
        self.inner, self.model_calls, self.log = inner, model_calls, []
        self.data_shape = inner.data_shape

    def forward(self, z):
        self.log.append((z.shape[0], len(self.model_calls)))
        return self.inner(z)


def _instrumented(path):
    den = load_model(f"diffusers:{path}")
    model_calls: list = []
    den.net.register_forward_pre_hook(lambda mod, args: model_calls.append(1))
    if den.decoder is not None:
        den.decoder = _CountingDecoder(den.decoder, model_calls)
    return den, model_calls


def _run(den, name, out, samples):
    from samplerbench.bench.runner import Runner
    from samplerbench.bench.spec import parse_spec

    spec = parse_spec({"models": [name], "solvers": ["heun"], "steps": [3], "samples": samples,
                       "threads": 1, "timing": {"warmup": 1, "repeats": 2},
                       "metrics": {"nonconv": True, "error": False}})
    runner = Runner(spec, out, progress=False)
    runner._models[name] = den                      # the instrumented model, not a fresh load
    runner.run()
    (row,) = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return row


def test_decoder_is_called_once_per_batch_after_the_solves(folders, tmp_path, monkeypatch):
    import samplerbench.bench.decode as decode

    monkeypatch.setattr(decode, "DECODE_BATCH", 2)
    name = f"diffusers:{folders[4]}"
    den, calls = _instrumented(folders[4])
    row = _run(den, name, tmp_path / "latent", samples=5)
    plain, plain_calls = _instrumented(folders[4])
    plain.decoder = None
    row0 = _run(plain, name, tmp_path / "plain", samples=5)
    assert row["status"] == row0["status"] == "ok"
    # the solve is the same with or without a decoder: NFE, model calls, samples
    assert row["nfe"] == row0["nfe"] == 5                       # heun, 3 steps: 2N - 1
    assert len(calls) == len(plain_calls) > 0
    assert row["x_fingerprint"] == row0["x_fingerprint"]
    # decoded once per batch of 2 (5 samples: 2 + 2 + 1), after every model call of the cell
    # (timing repeats and the 2N-step non-convergence solve included)
    assert den.decoder.log == [(2, len(calls)), (2, len(calls)), (1, len(calls))]
    assert row["metric_space"] == "decoded" and row0["metric_space"] == "state"
    assert row["decode_s"] > 0 and row0["decode_s"] is None


# ----------------------------------------------------------------------------------------------
# VAEs that do not fit, broken vae/ folders: exit 2, named
# ----------------------------------------------------------------------------------------------

def test_mismatched_latent_channels_exit_2(tmp_path, capsys):
    path = _folder(tmp_path / "mismatch", 4, 16)
    _exits_2(capsys, ["sample", f"diffusers:{path}", "euler", "--steps", "2", "--out",
                      tmp_path / "x.npz"], "latent_channels", "16", "4 channels")
    assert not (tmp_path / "x.npz").exists()
    _exits_2(capsys, ["run", "--models", f"diffusers:{path}", "--solvers", "euler", "--steps",
                      "2", "--out", tmp_path / "run"], "latent_channels")


def test_mismatched_vae_size_exit_2(tmp_path, capsys):
    path = _folder(tmp_path / "size", 4, 4)
    cfg = json.loads((path / "vae" / "config.json").read_text())
    cfg["sample_size"] = 32                                     # a 16x16 latent, not 4x4
    (path / "vae" / "config.json").write_text(json.dumps(cfg))
    _exits_2(capsys, ["sample", f"diffusers:{path}", "euler", "--steps", "2", "--out",
                      tmp_path / "x.npz"], "sample_size", "16x16", "4x4")


@pytest.mark.parametrize("broken", ["no_weights", "no_config", "no_folder", "bad_config",
                                    "truncated_weights"])
def test_broken_vae_folder_exit_2(folders, tmp_path, capsys, broken):
    path = tmp_path / "broken"
    shutil.copytree(folders[4], path)
    vae = path / "vae"
    needles = {"no_weights": ("diffusion_pytorch_model", "vae"), "no_config": ("config.json",
               "vae"), "no_folder": ("vae",), "bad_config": ("vae config.json",),
               "truncated_weights": ("vae",)}[broken]
    if broken == "no_weights":
        (vae / "diffusion_pytorch_model.safetensors").unlink()
    elif broken == "no_config":
        (vae / "config.json").unlink()
    elif broken == "no_folder":
        shutil.rmtree(vae)                          # model_index.json still names a vae
    elif broken == "bad_config":
        (vae / "config.json").write_text("{not json")
    else:
        w = vae / "diffusion_pytorch_model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
    _exits_2(capsys, ["sample", f"diffusers:{path}", "euler", "--steps", "2", "--out",
                      tmp_path / "x.npz"], *needles)


def test_vae_pickle_that_runs_code_is_refused(folders, tmp_path):
    """The vae/ weights go through the same check as the denoiser's: a .bin that would run code
    is refused before diffusers sees it."""
    from samplerbench.models.errors import UserError

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",))

    path = tmp_path / "evil"
    shutil.copytree(folders[4], path)
    (path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"decoder.conv_in.weight": Evil()}, path / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_model(f"diffusers:{path}")
    assert not (tmp_path / "pwned").exists()


def test_preview_shows_decoded_images(folders, tmp_path, monkeypatch):
    import samplerbench.models.zoo as zoo

    den, calls = _instrumented(folders[4])
    monkeypatch.setattr(zoo, "load_model", lambda name: den)
    assert main(["preview", f"diffusers:{folders[4]}", "--out", str(tmp_path), "--n", "4",
                 "--steps", "2", "--solver", "euler"]) == 0
    (png,) = tmp_path.glob("samples_*.png")              # one file, its name without a path
    assert png.stat().st_size > 0
    assert den.decoder.log == [(4, len(calls))]           # the RGB images were drawn
