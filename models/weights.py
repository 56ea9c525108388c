"""Safe weights: tensors from safetensors or ``torch.load(weights_only=True)``; a pickle that
would import or run code is refused with ``UserError`` (nothing in it is executed).  Also the
small JSON reader the folder adapters share."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import torch

from samplerbench.models.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def load_weights(path: str | Path, map_location="cpu") -> dict:
    """Tensors from ``path``: safetensors, or a torch checkpoint read with ``weights_only=True``.

    A pickle holding anything but tensors and plain containers (classes, functions, code) is
    refused with ``UserError``; nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint", str(path), hint="no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:          # SafetensorError: truncated, corrupt, not safetensors
            raise UserError("checkpoint", str(path), hint=f"cannot read it as safetensors "
                            f"(truncated or corrupt? {type(exc).__name__}: {str(exc)[:200]}); "
                            "copy or export the file again") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # "pickle protocol 4" advice
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError("checkpoint", str(path), hint=(
            "refusing to unpickle it: the file holds Python objects that would import or run code "
            "when loaded (weights_only=True rejected it" + (f": {first}" if first else "") + "). "
            "Convert the weights to safetensors in trusted code, or build the network in your own "
            "module and name it as edm:MODULE:NAME / flow:MODULE:NAME")) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError("checkpoint", str(path), hint=f"cannot read it as safetensors or a torch "
                        f"checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(what, str(path), hint=f"cannot read it as UTF-8 JSON ({exc})") from None
