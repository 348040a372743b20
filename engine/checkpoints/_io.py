"""Reading tensors from a file without running pickled code.

One loading path: safetensors when the file is one; otherwise
``torch.load(weights_only=True)``, with no unsafe fallback.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from engine.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["read_tensors"]

_SAFETENSORS_SUFFIXES = (".safetensors",)


def read_tensors(path: str | Path) -> dict:
    """Load a checkpoint file's object (usually a dict of tensors) safely.

    safetensors files give a flat ``{name: tensor}``; other files go through
    ``torch.load(weights_only=True)``, which refuses pickled code. Errors are a
    ``CheckpointError`` naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file; give a local path")
    if path.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused, the file holds pickled objects other than tensors ({str(e).splitlines()[0]}); "
            "convert it to safetensors with the code that made it"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]}); "
                              "is it truncated or of another format?") from e
