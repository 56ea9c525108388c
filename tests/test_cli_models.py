"""``samplerbench list models``: the registered names, then every model-spec form with its options,
a description and an example line that runs as printed."""

from __future__ import annotations

import os
import shlex

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from samplerbench.bench.cli import main  # noqa: E402
from samplerbench.models import examples  # noqa: E402
from samplerbench.models.zoo import SPEC_FORM_HELP, SPEC_FORMS, available_models  # noqa: E402


def _listing(capsys) -> list[str]:
    assert main(["list", "models"]) == 0
    return capsys.readouterr().out.splitlines()


def test_list_models_shows_names_then_every_spec_form(capsys):
    lines = _listing(capsys)
    firsts = [ln.split()[0] for ln in lines if ln.strip()]
    last_name = max(firsts.index(n) for n in available_models())
    # every form load_model accepts (SPEC_FORMS, the list its errors name) is shown after the
    # registered names, on its own line with its options and description, then an example line
    for spec in SPEC_FORMS:
        form = spec.split("?")[0]
        assert form in firsts and firsts.index(form) > last_name, form
        i = next(k for k, ln in enumerate(lines) if ln.startswith(form + " "))
        entry = next(f for f in SPEC_FORM_HELP if f.form == form)
        assert entry.description in lines[i] and entry.options in lines[i]
        assert lines[i + 1].split() == ["example:", *entry.example.split()]
    prefixes = {f.form.split(":")[0] for f in SPEC_FORM_HELP}
    assert prefixes == {"gmm", "diffusers", "edm", "flow"}
    pkl = next(f for f in SPEC_FORM_HELP if f.form == "edm:FILE.pkl")
    assert "trust_code=1" in pkl.options and "runs the file's code" in pkl.description
    flow = next(f for f in SPEC_FORM_HELP if f.form == "flow:MODULE:NAME")
    assert "signature=" in flow.options and "shape=" in flow.options


def _run_example(line: str) -> str:
    """Runs one example line in-process; returns the --out file of its sample command."""
    out = None
    for part in line.split("&&"):
        argv = shlex.split(part)
        if argv[:3] == ["python", "-m", "samplerbench.models.examples"]:
            assert examples.main(argv[3:]) == 0, part
        else:
            assert argv[:2] == ["samplerbench", "sample"], part
            assert main(argv[1:]) == 0, part
            out = argv[argv.index("--out") + 1]
    return out


# NFE the example's solver and steps must report (DESIGN: Euler N, Heun 2N - 1, DDIM N)
NFE = {"heun --steps 18": 35, "ddim --steps 10": 10, "euler --steps 16": 16}


@pytest.mark.parametrize("entry", SPEC_FORM_HELP, ids=[f.form for f in SPEC_FORM_HELP])
def test_spec_form_example_runs_as_printed(entry, tmp_path, monkeypatch, capsys):
    if entry.form.startswith("diffusers"):
        pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)
    z = np.load(_run_example(entry.example))
    nfe = [v for k, v in NFE.items() if k in entry.example]
    assert len(nfe) == 1 and int(z["nfe"]) == nfe[0]
    assert z["x"].shape[0] == 64 and np.isfinite(z["x"]).all()
    if "gaussian_" in entry.example:
        # the example models are the exact denoiser / velocity of N(0, 0.5^2 I) data: 64 samples
        # of std 0.5 (128 numbers: standard error of the std ~ 0.5 / sqrt(256) = 0.03)
        assert abs(float(z["x"].std()) - examples.DATA_STD) < 0.1
