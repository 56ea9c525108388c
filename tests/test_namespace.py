"""One namespace (issue 13): the packages are samplerbench.bench / .solvers / .models, and a
research repo with its own ``models/``, ``solvers/`` and ``bench/`` packages does not shadow
them."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_a_folder_with_its_own_models_solvers_bench_does_not_shadow(tmp_path):
    for pkg in ("models", "solvers", "bench"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"WHO = 'user {pkg}'\n")
    (tmp_path / "models" / "errors.py").write_text("raise ImportError('the user module')\n")
    r = _run(["-m", "samplerbench", "list", "models"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "gmm64" in r.stdout and "digits-vp" in r.stdout
    r = _run(["-c", "import models, samplerbench.models as sm; print(models.WHO); "
                    "print(sm.__name__, sm.load_model('gmm2d').data_shape)"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["user models", "samplerbench.models (2,)"]


def test_no_bare_top_level_packages_outside_the_checkout(tmp_path):
    r = _run(["-c", "import importlib.util as u; print([n for n in ('bench', 'models', "
                    "'solvers', 'benchmarks') if u.find_spec(n)])"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_plugin_imports_solver_from_the_namespace():
    from samplerbench.solvers import Solver, get_solver

    assert issubclass(type(get_solver("euler")), Solver)
    assert Solver.__module__ == "samplerbench.solvers.base"
