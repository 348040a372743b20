"""The on-disk image index: its format and commit protocol (``store``), building and
updating it from a folder (``build``), and the reader that answers queries (``reader``).

Names are imported on first use, so ``import vqclip.index.store`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Hit", "Index", "IndexReport", "IndexStore", "IMAGE_EXTENSIONS", "STORAGE_TYPES", "build_index",
           "update_index"]

_WHERE = {"Hit": "reader", "Index": "reader", "IndexReport": "build", "build_index": "build",
          "update_index": "build", "IndexStore": "store", "IMAGE_EXTENSIONS": "store", "STORAGE_TYPES": "store"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vqclip.index' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vqclip.index.{_WHERE[name]}"), name)
