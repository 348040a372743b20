"""Inputs for the tiny CLIP shared by the backend tests (the model is the root conftest's)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def pixels(tiny) -> np.ndarray:
    s = tiny.CLIP.image_size
    return np.random.default_rng(1).standard_normal((3, 3, s, s), dtype=np.float32)


@pytest.fixture
def ids(tiny) -> np.ndarray:
    cfg = tiny.CLIP
    rng = np.random.default_rng(2)
    ids = rng.integers(1, cfg.vocab_size - 2, (3, cfg.context_length), dtype=np.int64)
    ids[:, 0] = cfg.vocab_size - 2  # start of text
    for row, n in enumerate((4, 9, 76)):  # EOT at different places, the last one at the end
        ids[row, n] = cfg.vocab_size - 1
        ids[row, n + 1:] = 0
    return ids
