"""The append-only result store: ``rows.jsonl`` (one flat JSON object per finished cell, flushed
and fsynced as each cell ends) and ``run.json`` (spec + environment provenance)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from samplerbench.models.errors import UserError

ROW_KEYS = (
    "case_id", "model", "solver", "solver_params", "grid", "grid_params", "grid_requested",
    "final", "steps", "nfe", "forward_passes", "n_samples", "seed", "guidance", "noise", "device",
    "dtype", "state_dtype", "status", "message", "reference", "err_rms", "err_max", "fid",
    "fid_features", "kid", "kid_std", "kid_protocol", "swd", "nonconv", "wall_s", "model_s",
    "overhead_s", "decode_s", "metric_space", "nfe_budget", "blocks", "fid_se", "fid_blocks",
    "fid_floor", "fid_floor_sd", "kid_se", "kid_blocks", "kid_floor", "kid_floor_sd", "swd_se",
    "swd_blocks", "swd_floor", "swd_floor_sd", "err_rms_se", "x_fingerprint", "x_rms",
    "x_rms_max", "train_reached", "train_distinct",
    "time_per_sample_s", "peak_mem_bytes", "peak_mem_kind", "compile", "max_nfe", "git_sha",
    "torch_version",
)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# a row needs these as strings to be read at all (every version of the store wrote them)
REQUIRED_KEYS = ("case_id", "model", "solver", "grid", "status")
_warned: set[str] = set()


def _row_problem(obj) -> str | None:
    """Why a parsed line is not a result row, or None."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if not all(isinstance(obj.get(k), str) for k in REQUIRED_KEYS):
        return "missing " + ", ".join(REQUIRED_KEYS[:-1]) + " or " + REQUIRED_KEYS[-1]
    for k in ("solver_params", "grid_params"):
        if obj.get(k) is not None and not isinstance(obj[k], dict):
            return f"{k} not an object"
    return None


def read_rows(path: str | Path) -> list[dict]:
    """All complete rows.  A torn last line (a run killed mid-write) is ignored silently; any
    other line that is not a row (bad JSON, bad UTF-8, not an object, without case_id, model,
    solver, grid, status) is skipped, and one warning line on stderr counts them.  Skipped lines
    stay in the file: the store never blocks a resume or a report."""
    p = Path(path)
    if not p.exists():
        return []
    if not p.is_file():
        raise UserError(p.name, str(p), hint="it is not a regular file; move it away or choose "
                        "another --out")
    data = p.read_bytes()
    lines = data.split(b"\n")
    torn = len(lines) - 1 if lines and lines[-1].strip() else None    # no newline at its end
    rows, skipped = [], {}
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except json.JSONDecodeError:
            if i == torn:
                continue
            problem = "not JSON"
        else:
            problem = _row_problem(obj)
        if problem is None:
            rows.append(obj)
        else:
            skipped[problem] = skipped.get(problem, 0) + 1
    if skipped:
        n = sum(skipped.values())
        what = ", ".join(f"{v} {k}" for k, v in skipped.items())
        msg = (f"samplerbench: warning: {p}: skipped {n} line{'s' * (n != 1)} that are not "
               f"result rows ({what}); they are left in the file")
        if msg not in _warned:                 # once per process, however often it is read
            _warned.add(msg)
            print(msg, file=sys.stderr)
    return rows


BUDGET_MESSAGE = "NFE budget:"      # how a cell stopped by the spec's max_nfe begins its message


def over_budget(row: dict) -> bool:
    """The cell was stopped by ``max_nfe`` (a rerun with a larger budget computes it again)."""
    return row.get("status") == "failed" and str(row.get("message", "")).startswith(BUDGET_MESSAGE)


# the fields that make a cell (Cell.config); a row's case_id is a hash of them, but the hash's
# inputs have grown over versions (state_dtype, compile), so readers compare the fields
CELL_FIELDS = ("model", "solver", "solver_params", "grid", "grid_params", "grid_requested",
               "final", "steps", "n_samples", "seed", "noise", "guidance", "dtype",
               "state_dtype", "device", "compile", "nfe_budget")


def cell_key(row: dict) -> str:
    """What cell a row is of, independent of the case_id scheme that wrote it."""
    return json.dumps([row.get(k) for k in CELL_FIELDS], sort_keys=True, default=str)


def row_matches_cell(row: dict, config: dict) -> bool:
    """Whether ``row`` is a row of the cell with ``config`` (``Cell.config()``).

    case_ids cannot be recomputed from a row (the row records the solver's and grid's full
    parameters, the cell hashes the ones the spec gave, and older versions hashed fewer fields),
    so the fields are compared instead: every identity field the row has must equal the cell's,
    the cell's solver and grid parameters must appear in the row's with the same values, and the
    device type must agree ("cuda:0" is a "cuda" cell)."""
    for k in CELL_FIELDS:
        if k not in row or k not in config:
            continue                       # a field older versions did not record
        mine, theirs = config[k], row[k]
        if k == "steps" and config.get("nfe_budget") is not None:
            continue                       # a budget cell's steps are resolved when it runs
        if k == "grid":                    # a grid "auto" row records what it resolved to
            theirs = row.get("grid_requested") or theirs
        if k == "device":
            if str(theirs).split(":")[0] != str(mine).split(":")[0]:
                return False
        elif k in ("solver_params", "grid_params"):
            theirs = theirs or {}
            if not isinstance(theirs, dict) or any(
                    kk not in theirs or theirs[kk] != vv for kk, vv in (mine or {}).items()):
                return False
        elif theirs != mine:
            return False
    return True


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per cell: where a cell was computed again (a larger ``max_nfe``, or a rerun by a
    newer version whose case_id differs), its last row, at the position of the first."""
    last: dict = {}
    keys = [cell_key(r) for r in rows]
    for k, r in zip(keys, rows):
        last[k] = r
    seen, out = set(), []
    for k in keys:
        if k not in seen:
            seen.add(k)
            out.append(last[k])
    return out


class RowStore:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.path = self.dir / "rows.jsonl"

    def done_ids(self, max_nfe: int | None = None, cells=None) -> set[str]:
        """Cells finished for a run with NFE cap ``max_nfe``: every cell with a row, except those
        stopped by a smaller cap than this one (or by any cap, when this run has none).  Given
        the run's ``cells``, a row that claims a cell's case_id with another cell's fields is
        foreign and does not count (:func:`row_matches_cell`)."""
        rows = latest_rows(read_rows(self.path))
        if cells is not None:
            by_id = {c.case_id: c for c in cells}
            rows = [r for r in rows if r["case_id"] not in by_id
                    or row_matches_cell(r, by_id[r["case_id"]].config())]
        done = set()
        for r in rows:
            if over_budget(r) and (max_nfe is None or (r.get("max_nfe") or 0) < max_nfe):
                continue
            done.add(r["case_id"])
        return done

    def repair(self) -> None:
        """Drop a torn trailing line so the next append starts on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def append(self, row: dict) -> None:
        row = {k: _clean(row.get(k)) for k in ROW_KEYS}
        line = json.dumps(row, sort_keys=False, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# files the CLI writes: whole or not at all

# errors of the storage, not of a cell or of the input: a run stops (exit 2) instead of
# recording the cell as failed, so a rerun with space computes it
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def storage_error(exc: BaseException) -> bool:
    """``exc`` says the disk is full or read-only (ENOSPC, EDQUOT, EFBIG, EROFS)."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kw):
    """Open a temporary file beside ``path`` and move it over ``path`` (``os.replace``) when
    the block ends without an error: readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp's 0600 -> what open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_partial_files(folder: str | Path) -> list[str]:
    """Delete the temporaries :func:`atomic_open` leaves in ``folder`` when a process is killed
    inside a write (``.NAME.XXXXXXXX.tmp``; also ``run.json.tmp`` of older versions) and return
    their names.  Call it only while holding the folder's run lock: then no writer is alive."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for f in sorted(folder.iterdir()):
        if (f.name.startswith(".") and f.name.endswith(".tmp")) or f.name == "run.json.tmp":
            with contextlib.suppress(OSError):
                if f.is_file():
                    f.unlink()
                    gone.append(f.name)
    return gone


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors cache file, written atomically (a kill or a full disk mid-write leaves the
    old file or none, never a truncated one)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata=metadata))


def load_tensors(path: str | Path, keys=()) -> dict | None:
    """A safetensors cache file, or None -- with one warning -- when it is missing a key or
    cannot be read (truncated, corrupt, not safetensors): the caller recomputes and rewrites."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        from safetensors.torch import load_file

        data = load_file(str(path))
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"missing {', '.join(missing)}")
        return data
    except Exception as exc:
        import warnings

        warnings.warn(f"cache {path} unreadable ({type(exc).__name__}: {exc}); recomputing it",
                      RuntimeWarning, stacklevel=2)
        return None


def check_writable(folder: Path, field: str, shown: str) -> None:
    """Create and remove a file in ``folder``: the one test of writability that also holds for
    root and read-only mounts."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".samplerbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(field, shown, hint=f"cannot write there ({exc.strerror or exc}); choose "
                        "a writable location") from None


def check_out_dir(out: str | Path, field: str = "--out") -> Path:
    """Make sure ``out`` can hold a run (``run.json``, ``rows.jsonl``, ``.lock``, ``cache/``):
    a writable directory (created here) whose store files, where present, are regular files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(field, str(out), hint="it is an existing file, not a directory; give a "
                        "directory for the run's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(field, str(out), hint=f"cannot create this directory "
                        f"({exc.strerror or exc}); a part of the path may be a file") from None
    for name in ("run.json", "rows.jsonl", ".lock"):
        f = out / name
        if f.exists() and not f.is_file():
            raise UserError(f"{field} {name}", str(f), hint="it is not a regular file (a "
                            "directory?); move it away or choose another --out")
    if (out / "cache").exists() and not (out / "cache").is_dir():
        raise UserError(f"{field} cache", str(out / "cache"), hint="it is not a directory; move "
                        "it away or choose another --out")
    check_writable(out, field, str(out))
    return out


def check_out_file(path: str | Path, field: str = "--out") -> Path:
    """Make sure a file can be written at ``path`` before any work is done; nothing is created
    (the writer creates missing folders)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(field, str(path), hint="it is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise UserError(field, str(path), hint="it is not a regular file; give a file path")
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(field, str(path), hint=f"{folder} is a file, not a folder")
    check_writable(folder, field, str(path))
    return path
