"""Model families in plain PyTorch, sized by config dataclasses (``vqclip.models.configs``,
importable without torch; the modules are imported on first use)."""
from __future__ import annotations

import importlib
from typing import Any

from vqclip.models.configs import CLIPConfig, VQGANConfig

__all__ = ["CLIP", "CLIPConfig", "VQGAN", "VQGANConfig"]

_MODULES = {"CLIP": "vqclip.models.clip", "VQGAN": "vqclip.models.vqgan"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'vqclip.models' has no attribute {name!r}")
