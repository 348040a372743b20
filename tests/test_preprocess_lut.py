"""The preprocessor's table-lookup normalisation gives the bits of the float32 formula
``(x / 255 - mean) / std`` that OpenAI's pipeline applies, for every uint8 value and
every channel, so the parity tests of tests/test_preprocess.py keep holding exactly."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqclip.preprocess import Preprocessor


def _formula(pre: Preprocessor, rgb: np.ndarray) -> np.ndarray:
    x = rgb.astype(np.float32)  # (H, W, 3)
    return np.ascontiguousarray(((x / 255.0 - pre._mean) / pre._std).transpose(2, 0, 1))  # (3, H, W)


@pytest.mark.parametrize("mean, std", [
    ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI's
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ((0.1, 0.9, 0.33), (0.07, 1.3, 0.2)),
])
def test_every_level_matches_the_formula_bit_for_bit(mean, std):
    pre = Preprocessor(16, mean, std)
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([levels, levels[::-1], levels.T], axis=-1)  # (16, 16, 3): each channel sees all 256
    got = pre._normalise(rgb)
    assert got.dtype == np.float32 and got.shape == (3, 16, 16)
    np.testing.assert_array_equal(got.view(np.uint32), _formula(pre, rgb).view(np.uint32))


def test_batch_equals_formula_on_a_resized_image():
    pre = Preprocessor(24)
    rgb = (np.random.default_rng(0).random((40, 31, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(rgb)
    resized = im.resize(pre.resized_size(*im.size), resample=Image.Resampling.BICUBIC)
    want = _formula(pre, np.asarray(resized.crop(pre.crop_box(*resized.size))))  # (3, 24, 24)
    batch = pre([im, im])  # written in place into the batch array
    for row in batch:
        np.testing.assert_array_equal(row.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(pre.transform(im).view(np.uint32), want.view(np.uint32))
