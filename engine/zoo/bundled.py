"""The weights that ship inside the package: where they are and the checks before reading them.

``weights_file(record)`` is the one resolver every loader calls for a zoo name
(``vqclip.checkpoints.load_clip`` / ``load_vqgan``, the shape judge, export, model
identities): it returns the file, or raises a ``CheckpointError`` that names the file and
the command that rebuilds it.

Example::

    path = weights_file(get("shapes-clip"))  # .../vqclip/zoo/weights/shapes-clip.safetensors
"""
from __future__ import annotations

from pathlib import Path

from vqclip._hashing import sha256_file
from vqclip.errors import CheckpointError
from vqclip.zoo.records import ModelRecord, WeightsRecord

__all__ = ["WEIGHTS_DIR", "RECIPES", "JUDGE", "weights_file"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# How each bundled file is rebuilt (vqclip/zoo/MODEL_CARD.md has the timings).
RECIPES: dict[str, str] = {
    "shapes-clip": "python -m vqclip.recipe.train clip --out DIR, then python -m vqclip.recipe.train pack shapes-clip DIR",
    "shapes-vqgan": "python -m vqclip.recipe.train vqgan --out DIR, then python -m vqclip.recipe.train pack shapes-vqgan DIR",
    "shape-judge": "python -m vqclip.recipe.train judge --out DIR, then copy DIR/model.safetensors to "
                   "vqclip/zoo/weights/shape-judge.safetensors",
}

# The shape judge (vqclip.zoo.judge) has no architecture config in the registry, only weights.
JUDGE = ModelRecord(name="shape-judge", family="judge", config=None,
                    weights=WeightsRecord(path="shape-judge.safetensors",
                                          sha256="cff41b298a05f935b20e6e44516c8f5fefee65ce348398115bc4ceb2cfa40e92",
                                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                    description="independent CNN shape classifier of the shapes world (bundled)")


def weights_file(record: ModelRecord, weights_dir: str | Path | None = None) -> Path:
    """The checked weights file of a zoo record.

    A relative ``WeightsRecord.path`` is under ``weights_dir`` (default ``vqclip/zoo/weights``). Raises
    ``CheckpointError`` when the record has no weights, when the file is missing, and when
    its SHA-256 differs from the record's (a corrupt or replaced file); the message names
    the file and how to rebuild it. The digest is remembered per file and mtime, so a
    process checks each file once.
    """
    if record.weights is None:
        raise CheckpointError(f"zoo model {record.name!r} has no bundled weights; pass a local weights file "
                              "with its config instead")
    path = Path(record.weights.path)
    path = path if path.is_absolute() else Path(weights_dir or WEIGHTS_DIR) / path
    recipe = RECIPES.get(record.name, "the recipe in vqclip/recipe/train.py")
    if not path.is_file():
        raise CheckpointError(f"zoo model {record.name!r}: bundled weights file {str(path)!r} is missing; reinstall "
                              f"vqclip or retrain it with: {recipe}")
    if record.weights.sha256:
        got = sha256_file(path)
        if got != record.weights.sha256:
            raise CheckpointError(f"zoo model {record.name!r}: bundled weights file {str(path)!r} is corrupt (sha256 "
                                  f"{got[:12]}..., expected {record.weights.sha256[:12]}...); reinstall vqclip or "
                                  f"retrain it with: {recipe}")
    return path
