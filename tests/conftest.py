"""Shared pytest setup: offline Hugging Face hub, and the repository root importable first (so
``samplerbench`` -- and through it ``samplerbench.models``/``.solvers``/``.bench`` -- resolves to
this checkout even under a stale install)."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
# One intra-op thread, here and in CLI subprocesses: the tests' tensors are small, and on a busy
# 2-core machine OpenMP threads waiting for each other make tiny ops 1000x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
