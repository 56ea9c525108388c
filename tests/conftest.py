"""Shared pytest setup: offline Hugging Face hub, and the repository root importable first (so
``models``/``solvers``/``bench`` resolve to this checkout even under a stale editable install)."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
