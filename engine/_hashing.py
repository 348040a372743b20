"""The one definition of a content digest: sha256 of a file, of bytes, of a module's tensors."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "sha256_bytes", "state_dict_sha256"]

_CHUNK = 1 << 22  # 4 MiB reads: graphs and checkpoints can be GBs
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed; remembered per (path, size, mtime) in this process.

    Raises ``OSError`` when the file cannot be read (callers word it for their user).
    Example: ``sha256_file("ViT-B-32.pt")`` -> 64 hex characters.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _cache[key] = digest
    return digest


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def state_dict_sha256(module: Any) -> str:
    """Hex sha256 of a module's tensors: name, dtype, shape and bytes of each, in key order.

    The identity of weights that were never a file (a module built or changed in memory).
    """
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (logit_scale) cannot be byte-viewed
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
