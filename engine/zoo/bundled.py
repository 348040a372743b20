"""The weights that ship inside the package: where they are and the checks before reading them.

``weights_file(record)`` is what the loaders (``engine.checkpoints.load_clip`` /
``load_vqgan``) call for a zoo name: it returns the file, or raises a
``CheckpointError`` that names the file and the command that rebuilds it.

Example::

    path = weights_file(get("shapes-clip"))  # .../engine/zoo/weights/shapes-clip.safetensors
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from engine.errors import CheckpointError
from engine.zoo.registry import ModelRecord

__all__ = ["WEIGHTS_DIR", "weights_file", "sha256_of", "RECIPES"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# How each bundled file is rebuilt (engine/zoo/MODEL_CARD.md has the timings).
RECIPES: dict[str, str] = {
    "shapes-clip": "python -m engine.zoo.train clip --out DIR, then python -m engine.zoo.train pack shapes-clip DIR",
    "shapes-vqgan": "python -m engine.zoo.train vqgan --out DIR, then python -m engine.zoo.train pack shapes-vqgan DIR",
}


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_file(record: ModelRecord, weights_dir: str | Path | None = None) -> Path:
    """The checked weights file of a zoo record.

    A relative ``WeightsRecord.path`` is under ``weights_dir`` (default ``engine/zoo/weights``). Raises
    ``CheckpointError`` when the record has no weights, when the file is missing, and when
    its SHA-256 differs from the record's (a corrupt or replaced file); the message names
    the file and how to rebuild it.
    """
    if record.weights is None:
        raise CheckpointError(f"zoo model {record.name!r} has no bundled weights; pass a local weights file "
                              "with its config instead")
    path = Path(record.weights.path)
    path = path if path.is_absolute() else Path(weights_dir or WEIGHTS_DIR) / path
    recipe = RECIPES.get(record.name, "the recipe in engine/zoo/train.py")
    if not path.is_file():
        raise CheckpointError(f"zoo model {record.name!r}: bundled weights file {str(path)!r} is missing; reinstall "
                              f"vqclip or retrain it with: {recipe}")
    if record.weights.sha256:
        got = sha256_of(path)
        if got != record.weights.sha256:
            raise CheckpointError(f"zoo model {record.name!r}: bundled weights file {str(path)!r} is corrupt (sha256 "
                                  f"{got[:12]}..., expected {record.weights.sha256[:12]}...); reinstall vqclip or "
                                  f"retrain it with: {recipe}")
    return path
