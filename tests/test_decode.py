"""vqclip.decode: the parallel decode + preprocess pipeline (failures per item, input order kept)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vqclip.decode import decode_batches, read_and_decode
from vqclip.preprocess import Preprocessor


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def _png_bytes(width: int = 300, height: int = 200) -> bytes:
    buf = io.BytesIO()
    picture(width, height).save(buf, "PNG")
    return buf.getvalue()


def test_decode_batches_reports_per_item_in_order(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes())
    cut = tmp_path / "cut.png"
    cut.write_bytes(_png_bytes()[:300])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    paths = [str(good), str(junk), str(cut), str(tmp_path / "missing.png"), str(good)]
    pre = Preprocessor(32)
    for workers in (1, 3):
        batches = list(decode_batches(paths, read_and_decode, pre, batch_size=2, workers=workers))
        items = [it for b in batches for it in b[0]]
        bad = [it for b in batches for it, _ in b[3]]
        assert items == [paths[0], paths[4]] and bad == paths[1:4]  # input order kept
        reasons = [r for b in batches for _, r in b[3]]
        assert all(p in r for p, r in zip(paths[1:4], reasons))  # each reason names its file
        pixels = np.concatenate([b[2] for b in batches if b[2] is not None])
        np.testing.assert_array_equal(pixels[0], pre([str(good)])[0])  # (3, 32, 32)
        np.testing.assert_array_equal(pixels[0], pixels[1])
