"""Reading tensors from a file without running pickled code.

One loading path, chosen by the file's first bytes (not its suffix, not by catching a
generic error): safetensors; a TorchScript zip (read by ``_torchscript`` without
executing it); any other PyTorch file through ``torch.load(weights_only=True)``, with
no unsafe fallback.
"""
from __future__ import annotations

import json
import logging
import pickle
import struct
import zipfile
from pathlib import Path

from vqclip.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["read_json", "read_metadata", "read_tensors", "sniff_format"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save (>= 1.6) and torch.jit.save write zips
_PICKLE_PROTO = 0x80  # legacy torch.save: a pickle stream, protocol 2+


def sniff_format(path: str | Path) -> str:
    """What kind of weights file ``path`` is, from its first bytes.

    Returns ``"safetensors"``, ``"torchscript"``, ``"torch-zip"`` or ``"torch-legacy"``.
    Raises ``CheckpointError`` for a missing file, an empty one, or one that is none of
    these (random bytes, an image, a truncated zip).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file; give a local path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= size - 8:
            return "safetensors"
    if head.startswith(_ZIP_MAGIC):
        from vqclip.checkpoints._torchscript import is_torchscript_archive

        try:
            with zipfile.ZipFile(path) as zf:
                return "torchscript" if is_torchscript_archive(zf) else "torch-zip"
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: a zip file that cannot be read ({e}); is it truncated?") from e
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "torch-legacy"
    raise CheckpointError(
        f"{path}: not a weights file (first bytes {head[:8]!r}); expected safetensors, a torch.save "
        "file or a TorchScript archive"
    )


def read_tensors(path: str | Path) -> dict:
    """Load a checkpoint file's object (usually a flat ``{name: tensor}``) safely.

    safetensors and TorchScript archives give a flat ``{name: tensor}`` on CPU in the
    stored dtypes; other PyTorch files give whatever ``torch.load(weights_only=True)``
    returns (dicts, lists, tensors, numbers; e.g. ``{"state_dict": {...}, "epoch": 3}``),
    which refuses pickled code. Errors are a ``CheckpointError`` naming the file and
    what to do.

    Example::

        sd = read_tensors("model.safetensors")  # {'visual.proj': (768, 512) f32, ...}
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from e
    if kind == "torchscript":
        from vqclip.checkpoints._torchscript import read_torchscript_tensors

        return read_torchscript_tensors(path)
    import torch  # here, not at import: reading configs and JSON beside a checkpoint needs no torch

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


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``{}`` for other formats or none)."""
    if sniff_format(path) != "safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from e


def read_json(path: str | Path) -> dict | None:
    """A small JSON file next to the weights (a Hugging Face config.json), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e}); fix or remove it") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj
