"""A plain progress line on stderr: cells done, the current cell, elapsed and ETA."""

from __future__ import annotations

import sys
import time


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.computed, self.t_computed = 0, 0.0

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.t_computed / self.computed if self.computed else None
        eta = _fmt(rate * (self.total - self.done)) if rate is not None else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        line = (f"[{self.done:>{len(str(self.total))}}/{self.total}] {pct:5.1f}%  {label}  "
                f"| elapsed {_fmt(elapsed)}  ETA {eta}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish_cell(self, seconds: float | None) -> None:
        self.done += 1
        if seconds is not None:
            self.computed += 1
            self.t_computed += seconds

    def close(self, summary: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(summary + "\n")
        self.stream.flush()
