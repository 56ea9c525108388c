"""`make perf`: pytest-benchmark suites.  Figures are written to results/perf/ by the suites."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

PERF_DIR = _ROOT / "results" / "perf"

import torch  # noqa: E402

# One intra-op thread: the overhead being measured is per call, and on a shared 2-core machine
# OpenMP thread hand-offs dominate small kernels.  Recorded in the tables.
torch.set_num_threads(1)
