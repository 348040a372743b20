"""Loading real checkpoints from local paths, safely and strictly, and naming their weights.

The names are imported on first use: ``weights_digest`` (``identity``) needs no torch, so the
paths that run an existing export can name a model without importing it.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["convert_hf_clip", "convert_openclip", "infer_clip_config", "load_clip", "load_vqgan", "read_tensors",
           "weights_digest"]

_WHERE = {
    "read_tensors": "vqclip.checkpoints._io",
    "convert_hf_clip": "vqclip.checkpoints.clip",
    "convert_openclip": "vqclip.checkpoints.clip",
    "infer_clip_config": "vqclip.checkpoints.clip",
    "load_clip": "vqclip.checkpoints.clip",
    "weights_digest": "vqclip.checkpoints.identity",
    "load_vqgan": "vqclip.checkpoints.vqgan",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vqclip.checkpoints' has no attribute {name!r}")
