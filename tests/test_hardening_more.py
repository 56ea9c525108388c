"""Hardening (issue 15, the rest): a kill at any point of a digits run -- inside a cache write
included -- is repaired by a rerun with the rows of an uninterrupted run; diagonal Gaussian
mixtures stay diagonal at d = 10,000; the spec check loads each model once; float32 rows under
torchrun agree with one process within the README's tolerance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from samplerbench.bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# the spec check loads each model once
# ------------------------------------------------------------------------------------------------

def test_a_run_loads_each_model_once(tmp_path, monkeypatch):
    import samplerbench.bench.runner as runner
    import samplerbench.models.zoo as zoo

    loads: list[str] = []
    real = zoo.load_model

    def counting(name):
        loads.append(name)
        return real(name)

    monkeypatch.setattr(zoo, "load_model", counting)        # parse_spec imports it from zoo
    monkeypatch.setattr(runner, "load_model", counting)
    gmm = tmp_path / "m.json"
    gmm.write_text(json.dumps({"weights": [1.0, 2.0], "means": [[0.0, 1.0], [1.0, 0.0]],
                               "stds": [0.5, 0.3]}))
    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent(f"""
        models = ["gmm2d", "gmm2d-rf", "gmm:{gmm}"]
        solvers = ["euler", "heun"]
        steps = [2, 3]
        samples = 4
        [metrics]
        nonconv = false
        error = false
        weak = false
        """))
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert sorted(loads) == sorted(["gmm2d", "gmm2d-rf", f"gmm:{gmm}"])
    assert len((tmp_path / "o" / "rows.jsonl").read_text().splitlines()) == 12
    # the same with the flags that rebuild the spec (dataclasses.replace) and the ad-hoc form
    loads.clear()
    assert main(["run", "--models", "gmm2d,gmm2d-vp", "--solvers", "euler", "--steps", "2",
                 "--samples", "4", "--error", "off", "--max-nfe", "100", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert sorted(loads) == ["gmm2d", "gmm2d-vp"]
    # the loaded models are not part of the spec's record
    doc = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert "loaded" not in doc["spec"]


# ------------------------------------------------------------------------------------------------
# a full or read-only disk: exit 2 with one line, whole files, a rerun resumes
# ------------------------------------------------------------------------------------------------

ADHOC = ["--models", "gmm2d", "--solvers", "euler,dpmpp_2m", "--steps", "3", "--samples", "4",
         "--quiet"]


def _one_line_exit_2(capsys, args, *needles) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _disk_full_in(monkeypatch, prefix: str):
    """Writes (through store.atomic_open) to files named ``prefix``... fail half-way with
    ENOSPC, as on a full disk."""
    import contextlib
    import errno

    import samplerbench.bench.store as store

    real = store.atomic_open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def atomic_open(path, mode="wb", **kw):
        with real(path, mode, **kw) as f:
            yield Full(f) if Path(path).name.startswith(prefix) else f

    import samplerbench.bench.sample as sample

    monkeypatch.setattr(store, "atomic_open", atomic_open)
    monkeypatch.setattr(sample, "atomic_open", atomic_open)


def test_disk_full_during_run_stops_with_exit_2_and_a_rerun_completes(tmp_path, monkeypatch,
                                                                       capsys):
    import errno

    import samplerbench.bench.store as store
    from samplerbench.bench.runner import rows

    out = tmp_path / "o"
    with monkeypatch.context() as m:                  # the ODE reference cache: first cell
        _disk_full_in(m, "ref-")
        _one_line_exit_2(capsys, ["run", *ADHOC, "--out", out], "No space left on device",
                         "rerun")
    assert rows(out) == []                            # no cell recorded as failed
    assert not list((out / "cache").iterdir())        # no partial cache, no temporary
    real_append, n = store.RowStore.append, [0]

    def append(self, row):                            # rows.jsonl: the second row
        n[0] += 1
        if n[0] == 2:
            with open(self.path, "a") as f:
                f.write(json.dumps(row)[:40])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_append(self, row)

    with monkeypatch.context() as m:
        m.setattr(store.RowStore, "append", append)
        _one_line_exit_2(capsys, ["run", *ADHOC, "--out", out], "rows.jsonl", "No space left")
    assert [r["solver"] for r in rows(out)] == ["euler"]
    assert main(["run", *ADHOC, "--out", str(out)]) == 0        # space again: resumes
    assert "1 reused, 1 computed" in capsys.readouterr().out
    got = rows(out)
    assert [r["solver"] for r in got] == ["euler", "dpmpp_2m"]
    assert all(r["status"] == "ok" and r["err_rms"] > 0 for r in got)


def test_disk_full_during_report_and_sample_keeps_the_old_files(tmp_path, monkeypatch, capsys):
    import numpy as np

    out = tmp_path / "o"
    assert main(["run", *ADHOC, "--out", str(out)]) == 0
    npz = tmp_path / "x.npz"
    assert main(["sample", "gmm2d", "euler", "--steps", "2", "--n", "3", "--out", str(npz)]) == 0
    old = npz.read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as m:
        _disk_full_in(m, "")
        _one_line_exit_2(capsys, ["report", out, "--format", "csv"], "No space left")
        _one_line_exit_2(capsys, ["sample", "gmm2d", "euler", "--steps", "4", "--n", "3",
                                  "--out", npz], "No space left")
    assert list((out / "report").iterdir()) == []           # no part of a file, no temporary
    assert npz.read_bytes() == old and np.load(npz)["x"].shape == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "x.npz"]


def test_read_only_out_exits_2_even_for_root(tmp_path, monkeypatch, capsys):
    """A read-only mount (EROFS), simulated so that it holds for root as well: --out is named
    before anything is computed or written."""
    import errno
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve().is_relative_to(ro):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    _one_line_exit_2(capsys, ["run", *ADHOC, "--out", ro / "o"], "--out", "Read-only")
    _one_line_exit_2(capsys, ["sample", "gmm2d", "euler", "--steps", "2", "--out",
                              ro / "x.npz"], "--out", "Read-only")
    assert not list(ro.rglob("*.npz")) and not (ro / "o" / "rows.jsonl").exists()


# ------------------------------------------------------------------------------------------------
# truncated or corrupt safetensors, also read by load_weights in a user's factory
# ------------------------------------------------------------------------------------------------

FACTORY = """
import os
import torch
from samplerbench.models.weights import load_weights

class Net(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x, sigma):
        return self.w * x / (1 + sigma[:, None] ** 2)

def make():
    return Net(load_weights(os.path.join(os.path.dirname(__file__), "w.safetensors"))["w"])
"""


@pytest.mark.parametrize("damage", ["truncated", "header_only", "empty", "not_safetensors"])
def test_damaged_safetensors_in_a_user_factory(damage, tmp_path, capsys):
    from safetensors.torch import save

    from samplerbench.models.errors import UserError
    from samplerbench.models.weights import load_weights

    good = save({"w": torch.full((2,), 0.5)})
    bad = {"truncated": good[: len(good) - 3], "header_only": good[:8], "empty": b"",
           "not_safetensors": b"PK\x03\x04 a zip file"}[damage]
    w = tmp_path / "w.safetensors"
    (tmp_path / "mynet.py").write_text(FACTORY)
    w.write_bytes(good)
    assert main(["sample", f"edm:{tmp_path / 'mynet.py'}:make?shape=2", "euler", "--steps",
                 "2", "--n", "2", "--out", str(tmp_path / "ok.npz")]) == 0
    w.write_bytes(bad)
    with pytest.raises(UserError, match="w.safetensors"):
        load_weights(w)
    for cmd in (["sample", f"edm:{tmp_path / 'mynet.py'}:make?shape=2", "euler", "--steps", "2",
                 "--out", tmp_path / "x.npz"],
                ["run", "--models", f"edm:{tmp_path / 'mynet.py'}:make?shape=2", "--solvers",
                 "euler", "--steps", "2", "--out", tmp_path / "o"]):
        _one_line_exit_2(capsys, cmd, "checkpoint", "w.safetensors", "safetensors")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# diagonal mixtures stay diagonal (gmm: files with stds, any dimension)
# ------------------------------------------------------------------------------------------------

def _dense_denoiser(w, mu, var, a, sigma, x):
    """E[x0 | x_t] from the textbook formula with dense d x d matrices (float64)."""
    w = w / w.sum()
    K, d = mu.shape
    logp, means = [], []
    for k in range(K):
        C = torch.diag(var[k])
        S = a**2 * C + sigma**2 * torch.eye(d, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(a * mu[k], S)
        logp.append(w[k].log() + dist.log_prob(x))
        means.append(mu[k] + (a * C @ torch.linalg.solve(S, (x - a * mu[k]).T)).T)
    r = torch.softmax(torch.stack(logp, 1), 1)
    return torch.einsum("bk,kbd->bd", r, torch.stack(means))


def _big_tensors(obj, limit: int) -> list[str]:
    """Names of tensors with at least ``limit`` elements held by ``obj`` (attributes, and the
    tuples / dicts in them, one level deep)."""
    found = []
    for name, v in vars(obj).items():
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(
            v, (tuple, list)) else [(None, v)]
        for key, item in items:
            for t in (item if isinstance(item, tuple) else (item,)):
                if isinstance(t, torch.Tensor) and t.numel() >= limit:
                    found.append(f"{name}[{key}]")
    return found


@pytest.mark.parametrize("per_coordinate", [False, True])
def test_diagonal_mixture_equals_the_dense_formula(per_coordinate, tmp_path):
    from samplerbench.models.zoo import load_model

    g = torch.Generator().manual_seed(3)
    K, d = 3, 5
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    mu = torch.randn(K, d, generator=g, dtype=torch.float64)
    std = (torch.rand(K, d, generator=g, dtype=torch.float64) + 0.3 if per_coordinate else
           torch.rand(K, generator=g, dtype=torch.float64) + 0.3)
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"weights": w.tolist(), "means": mu.tolist(),
                             "stds": std.tolist()}))
    den = load_model(f"gmm:{f}")
    assert den.mixture.diagonal and den.mixture.eigvecs is None
    var = (std[:, None] if std.ndim == 1 else std).expand(K, d) ** 2
    x = 2 * torch.randn(6, d, generator=g, dtype=torch.float64)
    for t in (0.01, 0.3, 2.0, 30.0):
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(den.schedule.alpha(tt)), float(den.schedule.sigma(tt))
        got = den(x, torch.full((6,), t, dtype=torch.float64))
        want = _dense_denoiser(w, mu, var, a, s, x)
        assert (got - want).abs().max().item() < 1e-12, t
    # the same mixture given with dense covariances: the eigenbasis path agrees
    from samplerbench.models.gmm import GaussianMixture, GMMDenoiser

    dense = GMMDenoiser(GaussianMixture(w, mu, torch.diag_embed(var)), den.schedule)
    t = torch.tensor([0.05, 0.5, 5.0, 50.0, 1.0, 0.1], dtype=torch.float64)
    assert (den(x, t) - dense(x, t)).abs().max().item() < 1e-12
    assert torch.equal(den.mixture.covs, torch.diag_embed(var))
    assert den.mixture.trace_covariance() == pytest.approx(
        float(torch.trace(den.mixture.covariance())), rel=1e-14)


def test_diagonal_mixture_at_10000_dimensions_stays_small(tmp_path):
    """A 10,000-D mixture from stds: loading and a denoiser call hold no d x d matrix (one
    would be 800 MB), and the values are the per-coordinate formula."""
    import time

    from samplerbench.models.zoo import load_model

    K, d, B = 4, 10_000, 3
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(K, d, generator=g, dtype=torch.float64) * 0.05
    for stds in ([0.5, 1.0, 0.7, 2.0],
                 (torch.rand(K, d, generator=g, dtype=torch.float64) + 0.5).tolist()):
        f = tmp_path / "big.json"
        f.write_text(json.dumps({"weights": [1, 2, 3, 4], "means": mu.tolist(), "stds": stds,
                                 "data_shape": [1, 100, 100]}))
        t0 = time.perf_counter()
        den = load_model(f"gmm:{f}")
        x = torch.randn(B, 1, 100, 100, generator=g, dtype=torch.float64)
        t = torch.tensor([0.5, 2.0, 10.0], dtype=torch.float64)
        out = den(x, t)
        x32 = den(x.float(), t)
        elapsed = time.perf_counter() - t0
        assert out.shape == x.shape and out.dtype == torch.float64 and x32.dtype == torch.float32
        assert not _big_tensors(den.mixture, d * d // 100) and not _big_tensors(den, d * d // 100)
        assert den.mixture.variances.untyped_storage().nbytes() <= K * d * 8
        # per coordinate: responsibilities from sums of 1-D Gaussian log-densities
        var = torch.as_tensor(stds, dtype=torch.float64)
        var = (var[:, None] if var.ndim == 1 else var).expand(K, d) ** 2
        w = torch.tensor([1, 2, 3, 4], dtype=torch.float64) / 10
        a = den.schedule.alpha(t)[:, None, None]
        s2 = den.schedule.sigma(t)[:, None, None] ** 2
        xf = x.reshape(B, 1, d)
        v = a**2 * var + s2
        logp = w.log() - 0.5 * (v.log() + (xf - a * mu) ** 2 / v).sum(-1)
        r = torch.softmax(logp, 1)
        want = (r[..., None] * (mu + a * var / v * (xf - a * mu))).sum(1)
        assert (out.reshape(B, d) - want).abs().max().item() < 1e-12
        # float32: the log-densities are sums over 10,000 coordinates (rounding ~1e-3 in them)
        assert (x32.double().reshape(B, d) - want).abs().max().item() < 1e-3
        assert elapsed < 20, elapsed          # seconds, not the minutes a d x d eigh would take
        draws = den.exact_samples(8)
        assert draws.shape == (8, 1, 100, 100)


# ------------------------------------------------------------------------------------------------
# a kill at any point of a digits run, inside a cache write included
# ------------------------------------------------------------------------------------------------

DIGITS = """
name = "killed"
models = ["digits-ideal"]
solvers = ["euler", "dpmpp_2m"]
steps = [2]
samples = 16
threads = 1
[reference]
rtol = 1e-5
atol = 1e-5
[metrics]
kid = true
[timing]
warmup = 0
repeats = 1
"""
# what differs between two runs of the same cells: timings and memory
VOLATILE = {"wall_s", "model_s", "overhead_s", "decode_s", "time_per_sample_s", "peak_mem_bytes"}


def _rows(out: Path) -> dict:
    from samplerbench.bench.runner import rows

    return {r["case_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows(out)}


def _caches(out: Path) -> dict:
    from safetensors.torch import load_file

    return {f.name: load_file(str(f)) for f in (out / "cache").iterdir()}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The spec and the rows, cache files and run.json keys of an uninterrupted run."""
    d = tmp_path_factory.mktemp("digits")
    spec = d / "k.toml"
    spec.write_text(DIGITS)
    assert main(["run", str(spec), "--out", str(d / "whole"), "--quiet"]) == 0
    caches = _caches(d / "whole")
    assert sorted(n.split("-")[0] for n in caches) == ["fidref", "kidref", "ref"]
    rows = _rows(d / "whole")
    assert len(rows) == 2 and all(r["status"] == "ok" and r["kid"] is not None
                                  for r in rows.values())
    return spec, rows, caches


class Killed(BaseException):
    """What SIGKILL does to the Python code that runs: nothing after it (no handler sees it)."""


def _kill_at(monkeypatch, target: str):
    """Make the first write of a run to ``target`` (a file name prefix: "run.json", "ref-",
    "fidref-", "kidref-"; or "row 1", "row 2") die half-way, leaving what a kill would: for an
    atomic write its temporary beside the target, and -- as an older, non-atomic writer would
    have -- the first half of the file under the target's name; for a row, half a line."""
    import contextlib
    import io

    import samplerbench.bench.store as store

    real_open, real_append = store.atomic_open, store.RowStore.append
    rows = [0]

    @contextlib.contextmanager
    def atomic_open(path, mode="wb", **kw):
        buf = io.BytesIO() if "b" in mode else io.StringIO()
        yield buf
        data = buf.getvalue()
        data = data if isinstance(data, bytes) else data.encode()
        path = Path(path)
        if path.name.startswith(target):
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(data[: len(data) // 2])
            path.write_bytes(data[: len(data) // 2])
            raise Killed(target)
        with real_open(path, "wb") as f:
            f.write(data)

    def append(self, row):
        rows[0] += 1
        if target == f"row {rows[0]}":
            line = json.dumps(row)
            with open(self.path, "a") as f:
                f.write(line[: len(line) // 2])
            raise Killed(target)
        real_append(self, row)

    monkeypatch.setattr(store, "atomic_open", atomic_open)
    monkeypatch.setattr(store.RowStore, "append", append)


def test_a_kill_in_every_write_then_a_rerun_gives_the_rows_of_an_uninterrupted_run(
        digits_run, tmp_path, monkeypatch, capsys, recwarn):
    """Killed inside each write in turn (run.json, the ODE reference cache, the FID and KID
    reference caches, the first row, the second row), each time in the rerun of the folder the
    previous kill left; then a plain rerun completes it: equal rows, equal caches, no debris."""
    spec, want, caches = digits_run
    out = tmp_path / "o"
    targets = ("run.json", "ref-", "fidref-", "kidref-", "row 1", "row 2", None)
    for before, target in zip((None,) + targets, targets):
        capsys.readouterr()
        recwarn.clear()
        if target is None:                                  # the plain rerun
            assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
        else:
            with monkeypatch.context() as m:
                _kill_at(m, target)
                with pytest.raises(Killed):
                    main(["run", str(spec), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        unreadable = [str(w.message) for w in recwarn if "unreadable" in str(w.message)]
        if before is None or before.startswith("row"):   # a torn row is cut silently
            assert "partial file" not in err and not unreadable, (target, err, unreadable)
        else:                       # the temporary is removed, the truncated file recomputed
            assert "removed 1 partial file left by an interrupted run" in err, (target, err)
            assert f".{before}" in err
            if before != "run.json":
                assert len(unreadable) == 1 and f"/{before}" in unreadable[0], unreadable
        if target == "row 2":
            assert len((out / "rows.jsonl").read_text().splitlines()) == 2   # a row, a torn one
    assert _rows(out) == want
    got = _caches(out)
    assert got.keys() == caches.keys()
    for name, tensors in caches.items():           # the same tensors, bit for bit
        assert got[name].keys() == tensors.keys()
        assert all(torch.equal(got[name][k], v) for k, v in tensors.items()), name
    assert sorted(p.name for p in out.iterdir()) == [".lock", "cache", "rows.jsonl", "run.json"]
    assert json.loads((out / "run.json").read_text())["spec"]["name"] == "killed"


KILLER = """
import os, signal, sys
import samplerbench.bench.store as store
from samplerbench.bench.cli import main

target = os.environ["KILL_IN"]
real_write, real_append = store.atomic_write_bytes, store.RowStore.append
rows = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write_bytes(path, data):
    if os.path.basename(path).startswith(target):      # SIGKILL inside the real atomic write
        with store.atomic_open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            die()
    real_write(path, data)

def append(self, row):
    rows[0] += 1
    if target == f"row {rows[0]}":                       # SIGKILL before the row is written
        die()
    real_append(self, row)

store.atomic_write_bytes = atomic_write_bytes
store.RowStore.append = append
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_inside_cache_writes_and_between_rows_then_rerun(digits_run, tmp_path, capsys):
    """Real SIGKILLs of `samplerbench run` on a digits model: inside the atomic write of the ODE
    reference cache, then (in the rerun) after the first row; the next rerun (no clean-up by
    hand) gives the rows and caches of an uninterrupted run.  (Every other write is killed in
    the test above, in-process: each subprocess costs seconds of imports.)"""
    spec, want, caches = digits_run
    out = tmp_path / "o"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for target in ("ref-", "row 2"):
        p = subprocess.run([sys.executable, "-c", KILLER, "run", str(spec), "--out", str(out),
                            "--quiet"], cwd=ROOT, env=dict(env, KILL_IN=target),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (target, p.returncode, p.stderr[-2000:])
        if target != "row 2":          # killed inside the write: its temporary is left
            left = [f.name for f in (out / "cache").iterdir() if f.name.endswith(".tmp")]
            assert len(left) == 1 and left[0].startswith(f".{target}"), left
            assert not any(f.name.startswith(target) for f in (out / "cache").iterdir())
    assert len((out / "rows.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "1 reused, 1 computed" in capsys.readouterr().out
    assert _rows(out) == want
    got = _caches(out)
    assert got.keys() == caches.keys()
    for name, tensors in caches.items():
        assert all(torch.equal(got[name][k], v) for k, v in tensors.items()), name
    assert not [f for f in (out / "cache").iterdir() if f.name.endswith(".tmp")]


def test_frechet_of_a_diagonal_mixture_without_its_covariance_matrix(monkeypatch):
    """The operator form of the Frechet distance (n x n instead of d x d) equals the dense
    formula, for n < d and n > d; above DENSE_COV_MAX_DIM QualityMetrics scores a diagonal
    mixture's samples without ever forming its covariance matrix."""
    import samplerbench.bench.quality as quality
    from samplerbench.bench.metrics import frechet_gaussian, frechet_gaussian_op
    from samplerbench.models.gmm import GaussianMixture, GMMDenoiser
    from samplerbench.models.schedules import make_schedule

    g = torch.Generator().manual_seed(5)
    # n < d: the dense formula takes square roots of a rank-deficient cov_x, whose zero
    # eigenvalues come out as +-1e-16 and their roots as ~1e-8: it is the less accurate one there
    for d, n, rel in ((40, 12, 1e-7), (6, 50, 1e-12)):
        var = torch.rand(3, d, generator=g, dtype=torch.float64) + 0.2
        mix = GaussianMixture([1.0, 2.0, 3.0], torch.randn(3, d, generator=g, dtype=torch.float64),
                              variances=var)
        x = 1.3 * mix.sample(n, g)
        want = frechet_gaussian(x, mix.mean(), mix.covariance())
        got = frechet_gaussian_op(x, mix.mean(), mix.cov_times, mix.trace_covariance())
        assert got == pytest.approx(want, rel=rel) and want > 0.5
        dense = GaussianMixture(mix.weights, mix.means, mix.covs)
        assert torch.allclose(dense.cov_times(x.T), mix.cov_times(x.T), rtol=0, atol=1e-12)
    K, d = 3, 400
    mix = GaussianMixture([1.0, 1.0, 2.0], torch.randn(K, d, generator=g, dtype=torch.float64),
                          variances=torch.full((K, d), 0.25, dtype=torch.float64))
    den = GMMDenoiser(mix, make_schedule("edm"))
    exact, off = mix.sample(16, g), mix.sample(16, g) * 1.5
    monkeypatch.setattr(quality, "DENSE_COV_MAX_DIM", 100)
    monkeypatch.setattr(GaussianMixture, "covariance", lambda self: pytest.fail("d x d built"))
    q = quality.QualityMetrics()
    a, b = q(den, exact, 4), q(den, off, 4)
    assert a["fid_features"] == "data:exact-moments" and a["fid_se"] is not None
    # exact samples score at their floor (the O(d / n) bias), scaled ones far above it
    assert a["fid"] == pytest.approx(a["fid_floor"], rel=0.1)
    assert b["fid"] > a["fid"] + 10 * a["fid_floor_sd"] and b["swd"] > a["swd"]
