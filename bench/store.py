"""The append-only result store: ``rows.jsonl`` (one flat JSON object per finished cell, flushed
and fsynced as each cell ends) and ``run.json`` (spec + environment provenance)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

ROW_KEYS = (
    "case_id", "model", "solver", "solver_params", "grid", "grid_params", "final", "steps", "nfe",
    "forward_passes", "n_samples", "seed", "guidance", "noise", "device", "dtype", "state_dtype",
    "status", "message", "reference", "err_rms", "err_max", "fid", "fid_features", "kid",
    "kid_std", "kid_protocol", "swd", "nonconv", "wall_s", "model_s", "overhead_s",
    "nfe_budget", "blocks", "fid_se", "fid_blocks", "fid_floor", "fid_floor_sd", "kid_se",
    "kid_blocks", "kid_floor", "kid_floor_sd", "swd_se", "swd_blocks", "swd_floor",
    "swd_floor_sd", "err_rms_se", "x_fingerprint", "x_rms", "train_reached", "train_distinct",
    "time_per_sample_s", "peak_mem_bytes", "peak_mem_kind", "compile", "max_nfe", "git_sha",
    "torch_version",
)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_rows(path: str | Path) -> list[dict]:
    """All complete rows; a torn last line (a run killed mid-write) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


BUDGET_MESSAGE = "NFE budget:"      # how a cell stopped by the spec's max_nfe begins its message


def over_budget(row: dict) -> bool:
    """The cell was stopped by ``max_nfe`` (a rerun with a larger budget computes it again)."""
    return row.get("status") == "failed" and str(row.get("message", "")).startswith(BUDGET_MESSAGE)


# the fields that make a cell (Cell.config); a row's case_id is a hash of them, but the hash's
# inputs have grown over versions (state_dtype, compile), so readers compare the fields
CELL_FIELDS = ("model", "solver", "solver_params", "grid", "grid_params", "final", "steps",
               "n_samples", "seed", "noise", "guidance", "dtype", "state_dtype", "device",
               "compile", "nfe_budget")


def cell_key(row: dict) -> str:
    """What cell a row is of, independent of the case_id scheme that wrote it."""
    return json.dumps([row.get(k) for k in CELL_FIELDS], sort_keys=True, default=str)


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

    def done_ids(self, max_nfe: int | None = None) -> set[str]:
        """Cells finished for a run with NFE cap ``max_nfe``: every cell with a row, except those
        stopped by a smaller cap than this one (or by any cap, when this run has none)."""
        done = set()
        for r in latest_rows(read_rows(self.path)):
            if "case_id" not in r:
                continue
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
