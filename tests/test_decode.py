"""vqclip.decode: the one image decoder (every bad input a typed error) and the parallel
decode + preprocess pipeline (failures per item, input order kept)."""
from __future__ import annotations

import io
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vqclip.decode import DEFAULT_MAX_PIXELS, decode_batches, load_image, read_and_decode
from vqclip.errors import ImageDecodeError, InputShapeError
from vqclip.preprocess import Preprocessor


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_load_image_leaves_the_input_alone():
    im = picture(40, 30).convert("RGBA")
    out = load_image(im)
    assert out is not im and out.mode == "RGB" and im.mode == "RGBA"


# -- bad input ------------------------------------------------------------------------


def _png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG with the given declared size and (by default) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def _png_bytes(width: int = 300, height: int = 200) -> bytes:
    buf = io.BytesIO()
    picture(width, height).save(buf, "PNG")
    return buf.getvalue()


def test_truncated_file(tmp_path):
    data = _png_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(path)
    buf = io.BytesIO()
    picture(300, 200).save(buf, "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(buf.getvalue()[:600])


def test_non_image_bytes():
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(b"this is not an image, it is a sentence")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(b"")


def test_zero_sized_images():
    with pytest.raises(ImageDecodeError, match="zero-sized"):
        load_image(_png_header(0, 0))  # Pillow will not save one; the header says 0x0
    with pytest.raises(ImageDecodeError, match="zero-sized"):
        load_image(_png_header(0, 10))
    with pytest.raises(ImageDecodeError, match="0x0 pixels"):
        load_image(Image.new("RGB", (0, 0)))


def test_decompression_bomb_fails_before_decoding():
    bomb = _png_header(10_000, 10_000)  # 100 megapixels declared in a ~60-byte file
    assert len(bomb) < 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own header warning
        with pytest.raises(ImageDecodeError, match=r"10000x10000 = 100,000,000 pixels.*limit"):
            load_image(bomb)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100, f"decoding a 300 MB bitmap was attempted ({grown_mib:.0f} MiB)"
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageDecodeError, match="limit"):
        load_image(_png_bytes(300, 200), max_pixels=300 * 200 - 1)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(_png_header(20_000, 20_000))  # over twice Pillow's limit: Pillow refuses


def test_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="cannot be decoded"):
        load_image(tmp_path)  # a directory
    with pytest.raises(InputShapeError, match="fromarray"):
        load_image(np.zeros((4, 4, 3), np.uint8))


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
