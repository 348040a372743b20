"""A model's identity: the sha256 that names its weights, the same however they were given.

A zoo name, the path of its weights file, the Hugging Face folder holding that file, and
a module loaded from any of them all have the digest of the file's bytes; a module built
or changed in memory has the digest of its tensors. Index headers, the export cache and
export manifests all key on this one definition.

Example::

    weights_digest("shapes-clip") == weights_digest(load_clip("shapes-clip"))   # True
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vqclip._hashing import sha256_file, state_dict_sha256
from vqclip.errors import CheckpointError

__all__ = ["HF_WEIGHT_FILES", "weights_file_of", "weights_digest", "remember_source"]

# The weights file a model folder is read from, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors",  # Hugging Face CLIPModel (save_pretrained)
    "pytorch_model.bin",  # Hugging Face, older pickled form
    "open_clip_model.safetensors",  # OpenCLIP's Hub folders
    "open_clip_pytorch_model.bin",
)

_SOURCE_ATTR = "_vqclip_weights_source"  # the file a loader read, and the tensors as they were then


def weights_file_of(folder: str | os.PathLike) -> Path:
    """The weights file inside a model folder; ``CheckpointError`` when it holds none."""
    folder = Path(folder)
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"folder {str(folder)!r} holds no {' / '.join(HF_WEIGHT_FILES)}; "
                          "give the weights file itself")


def _tensor_state(module: Any) -> tuple:
    """Where each tensor lives and how often it was changed in place: cheap, and it moves
    when a weight is edited (``add_``, an optimiser step) or replaced."""
    return tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())


def remember_source(module: Any, path: str | os.PathLike) -> None:
    """Record on ``module`` the file its weights were read from (loaders call this)."""
    st = Path(path).stat()
    setattr(module, _SOURCE_ATTR, (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, _tensor_state(module)))


def weights_digest(source: Any) -> str:
    """Hex sha256 naming the weights of ``source``.

    ``source``: a zoo name with bundled weights, a weights file, a model folder, or a
    module. A module remembers the file a vqclip loader read it from and gets that file's
    digest while neither the file nor the module's tensors have changed; otherwise (built
    in memory, edited, or the file rewritten since) the digest of its tensors. Raises ``CheckpointError`` for a name that is
    neither a path nor a zoo model with weights.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(source)))
        if path.is_dir():
            path = weights_file_of(path)
        if not path.exists():
            from vqclip.errors import UnknownModelError
            from vqclip.zoo import get
            from vqclip.zoo.bundled import weights_file

            try:
                path = weights_file(get(os.fspath(source)))
            except UnknownModelError as e:
                raise CheckpointError(f"{os.fspath(source)!r} is neither a file nor a known model ({e})") from e
        try:
            return sha256_file(path)
        except OSError as e:
            raise CheckpointError(f"cannot read {str(path)!r} to identify its weights ({e.strerror})") from e
    recorded = getattr(source, _SOURCE_ATTR, None)
    if recorded is not None and recorded[3] == _tensor_state(source):
        path, size, mtime, _ = recorded
        try:
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) == (size, mtime):
                return sha256_file(path)
        except OSError:
            pass  # the file is gone: the tensors themselves are the identity
    return state_dict_sha256(source)
