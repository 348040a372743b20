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
from vqclip.checkpoints._io import read_json
from vqclip.errors import CheckpointError

__all__ = ["HF_WEIGHT_FILES", "weights_file_of", "shard_files", "weights_digest", "remember_source"]

# The weights file a model folder is read from, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors",  # Hugging Face CLIPModel (save_pretrained)
    "model.safetensors.index.json",  # the same, sharded (save_pretrained(max_shard_size=...))
    "pytorch_model.bin",  # Hugging Face, older pickled form
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",  # OpenCLIP's Hub folders
    "open_clip_pytorch_model.bin",
)
_INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's map from tensor name to shard file

_SOURCE_ATTR = "_vqclip_weights_source"  # the file a loader read, and the tensors as they were then


def _describes_hf_clip(config_json: Path) -> bool:
    """Whether a folder's ``config.json`` is a Hugging Face CLIP config (timm's Hub repos put
    their own image-tower ``config.json`` beside OpenCLIP's files)."""
    try:
        obj = read_json(config_json)
    except CheckpointError:
        return False  # unreadable: it describes nothing, and the loader reports it if it reads it
    return obj is not None and str(obj.get("model_type", "")).startswith("clip")


def weights_file_of(folder: str | os.PathLike) -> Path:
    """The weights file inside a model folder; ``CheckpointError`` when it holds none.

    The file its config describes: Hugging Face's (``model.safetensors`` ...) when
    ``config.json`` is a CLIP config, OpenCLIP's when ``open_clip_config.json`` is there and
    ``config.json`` is not CLIP's (timm's Hub repos), else the first of ``HF_WEIGHT_FILES``.
    """
    folder = Path(folder)
    names = HF_WEIGHT_FILES
    if (folder / "open_clip_config.json").is_file() and not _describes_hf_clip(folder / "config.json"):
        names = tuple(n for n in HF_WEIGHT_FILES if n.startswith("open_clip")) + names
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"folder {str(folder)!r} holds no {' / '.join(HF_WEIGHT_FILES)}; "
                          "give the weights file itself")


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The files holding a checkpoint's tensors: the shards an ``*.index.json`` names (in
    name order, each once), or the file itself."""
    path = Path(path)
    if not path.name.endswith(_INDEX_SUFFIX):
        return [path]
    index = read_json(path)
    weight_map = (index or {}).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: a shard index needs a non-empty 'weight_map'; is the file damaged?")
    names = sorted(set(weight_map.values()))
    if any(not isinstance(n, str) or Path(n).name != n for n in names):
        raise CheckpointError(f"{path}: shard names must be plain file names beside the index")
    return [path.parent / n for n in names]


# Digests already computed in this process, by the files' (path, size, mtime): naming a model
# and then loading it (open_encoder, index builds) would otherwise hash its weights twice.
_DIGESTS: dict[tuple, str] = {}


def _digest_files(path: Path) -> str:
    """sha256 of a file's bytes; for a shard index, of its shards' names and digests."""
    key = _stats(path)
    if key in _DIGESTS:
        return _DIGESTS[key]
    files = shard_files(path)
    if files == [path]:
        digest = sha256_file(path)
    else:
        import hashlib

        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name} {sha256_file(f)}\n".encode())
        digest = h.hexdigest()
    _DIGESTS[key] = digest
    return digest


def _stats(path: Path) -> tuple:
    """(resolved path, size, mtime_ns) of each file holding the checkpoint."""
    return tuple((str(f.resolve()), st.st_size, st.st_mtime_ns)
                 for f in shard_files(path) for st in (f.stat(),))


def _tensor_state(module: Any) -> tuple:
    """Where each tensor lives and how often it was changed in place: cheap, and it moves
    when a weight is edited (``add_``, an optimiser step) or replaced."""
    return tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())


def remember_source(module: Any, path: str | os.PathLike) -> None:
    """Record on ``module`` the file its weights were read from (loaders call this)."""
    setattr(module, _SOURCE_ATTR, (str(Path(path).resolve()), _stats(Path(path)), _tensor_state(module)))


def weights_digest(source: Any) -> str:
    """Hex sha256 naming the weights of ``source``.

    ``source``: a zoo name with bundled weights, a weights file, a model folder, or a
    module. A module remembers the file a vqclip loader read it from and gets that file's
    digest while neither the file nor the module's tensors have changed; otherwise (built
    in memory, edited, or the file rewritten since) the digest of its tensors. A sharded
    checkpoint's digest is that of its shards' names and digests. Raises ``CheckpointError``
    for a name that is neither a path nor a zoo model with weights.
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
            return _digest_files(path)
        except OSError as e:
            raise CheckpointError(f"cannot read {str(path)!r} to identify its weights ({e.strerror})") from e
    recorded = getattr(source, _SOURCE_ATTR, None)
    if recorded is not None and recorded[2] == _tensor_state(source):
        path, stats, _ = recorded
        try:
            if _stats(Path(path)) == stats:
                return _digest_files(Path(path))
        except (OSError, CheckpointError):
            pass  # the file is gone or changed: the tensors themselves are the identity
    return state_dict_sha256(source)
