"""vqclip: an optimised inference engine for CLIP and VQGAN.

The public API, imported on first use (``import vqclip`` loads nothing heavy)::

    import vqclip
    enc = vqclip.open_encoder("shapes-clip", backend="onnxruntime", precision="int8")
    clf = vqclip.ZeroShotClassifier(enc, ["a red circle", "a blue star"])
    idx = vqclip.Index.open("pics.vqindex")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# Public name -> the module that defines it.
_API = {
    "open_encoder": "vqclip.encoder",
    "Encoder": "vqclip.encoder",
    "load_clip": "vqclip.checkpoints",
    "load_vqgan": "vqclip.checkpoints",
    "weights_digest": "vqclip.checkpoints",
    "ZeroShotClassifier": "vqclip.jobs.classify",
    "Index": "vqclip.index.reader",
    "build_index": "vqclip.index.build",
    "update_index": "vqclip.index.build",
    "Generator": "vqclip.jobs.generate.generator",
    "Gallery": "vqclip.kernels",
    "topk_cosine": "vqclip.kernels",
    "open_backend": "vqclip.backends",
    "export_model": "vqclip.export",
    "read_manifest": "vqclip.manifest",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'vqclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
