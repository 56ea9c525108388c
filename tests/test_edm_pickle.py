"""``edm:FILE.pkl``: an NVlabs EDM network pickle is refused (exit 2, naming the opt-in) and runs
no code unless ``trust_code=1``; with it, the loaded denoiser is the pickled network exactly."""

from __future__ import annotations

import pickle
import pickletools
import sys

import pytest
import torch

from samplerbench.bench.cli import main
from samplerbench.models.errors import UserError
from samplerbench.models.examples import write_edm_pickle
from samplerbench.models.zoo import load_model


def _globals(path) -> set[str]:
    """module.name of every global the pickle names (protocol 2: GLOBAL; 4: STACK_GLOBAL)."""
    out, strings = set(), []
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.add(".".join(strings[-2:]))
    return out


@pytest.fixture
def edm_pkl(tmp_path):
    path = tmp_path / "network-snapshot-000000.pkl"
    net = write_edm_pickle(path, resolution=4, channels=2, seed=3)
    return path, net


def test_pickle_has_the_nvlabs_layout(edm_pkl):
    path, _ = edm_pkl
    names = _globals(path)
    assert "torch_utils.persistence._reconstruct_persistent_obj" in names
    # nothing of ours is named: the file loads where samplerbench is not installed (with
    # NVlabs' torch_utils), and ours loads NVlabs' files
    assert not any(n.startswith("samplerbench") for n in names), names
    assert "torch_utils" not in sys.modules


def test_trusted_pickle_is_the_network_exactly(edm_pkl, capsys):
    path, net = edm_pkl
    den = load_model(f"edm:{path}?trust_code=1")
    assert "runs the code it carries" in capsys.readouterr().err
    assert "torch_utils" not in sys.modules and "torch_utils.persistence" not in sys.modules
    assert den.data_shape == (2, 4, 4)
    # EDMPrecond's sigma_min = 0 and sigma_max = inf become EDM's sampling range
    assert (den.t_min, den.t_max) == (0.002, 80.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0])
    with torch.no_grad():
        want = net(x, sigma)
    got = den(x, sigma)
    assert torch.equal(got, want)
    assert den(x.double(), sigma.double()).dtype == torch.float64     # the net stays float32
    # the network is a fresh object rebuilt from the embedded source, not the one we pickled
    assert den.network is not net and type(den.network).__name__ == "TinyEDMPrecond"
    assert torch.equal(den.network.model.inp.weight, net.model.inp.weight)
    opts = load_model(f"edm:{path}?trust_code=1&sigma_max=20&shape=2,4,4")
    assert opts.t_max == 20.0 and torch.equal(opts(x, sigma), want)


def test_untrusted_pickle_exits_2_naming_the_opt_in(edm_pkl, capsys, tmp_path):
    path, _ = edm_pkl
    rc = main(["sample", f"edm:{path}", "euler", "--steps", "2", "--out",
               str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"edm:{path}?trust_code=1" in err and "runs the file's code" in err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(UserError, match="trust_code"):
        load_model(f"edm:{path}?trust_code=maybe")
    with pytest.raises(UserError, match="network pickle only"):
        load_model("edm:samplerbench.models.examples:gaussian_edm?trust_code=1")


def test_trusted_pickle_samples_from_the_cli(edm_pkl, tmp_path, capsys):
    import numpy as np

    path, net = edm_pkl
    out = tmp_path / "x.npz"
    assert main(["sample", f"edm:{path}?trust_code=1", "euler", "--steps", "3", "--n", "2",
                 "--out", str(out)]) == 0
    z = np.load(out)
    assert z["x"].shape == (2, 2, 4, 4) and int(z["nfe"]) == 3
    assert np.isfinite(z["x"]).all()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_runs_nothing_without_the_opt_in(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "edm-cifar10.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"ema": _Evil(marker)}, f)
    for spec in (f"edm:{evil}", f"edm:{evil}?trust_code=0", f"edm:{evil}?shape=3,8,8"):
        rc = main(["sample", spec, "euler", "--steps", "2", "--out", str(tmp_path / "x.npz")])
        err = capsys.readouterr().err
        assert rc == 2 and "trust_code=1" in err and "Traceback" not in err
    rc = main(["run", "--models", f"edm:{evil}", "--solvers", "euler", "--steps", "2",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2 and "trust_code=1" in capsys.readouterr().err
    assert not marker.exists()
    # the file really is malicious: the opt-in runs it (and then reports that 'ema' is no net)
    with pytest.raises(UserError, match="not a network"):
        load_model(f"edm:{evil}?trust_code=1")
    assert marker.read_text() == "pwned"
