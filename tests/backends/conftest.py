"""Fixtures shared by the backend tests: a tiny CLIP and inputs for it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.clip import CLIP, CLIPConfig

# Small enough that export + four sessions take seconds on a loaded 2-core machine, big
# enough to have several heads and layers (so attention and the causal mask matter).
TINY = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                  vision_heads=2, text_width=64, text_layers=2, text_heads=2)


@pytest.fixture(scope="session")
def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY).eval()


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, 3, TINY.image_size, TINY.image_size), dtype=np.float32)


@pytest.fixture
def ids() -> np.ndarray:
    rng = np.random.default_rng(2)
    ids = rng.integers(1, TINY.vocab_size - 2, (3, TINY.context_length), dtype=np.int64)
    ids[:, 0] = TINY.vocab_size - 2  # start of text
    for row, n in enumerate((4, 9, 76)):  # EOT at different places, the last one at the end
        ids[row, n] = TINY.vocab_size - 1
        ids[row, n + 1:] = 0
    return ids
