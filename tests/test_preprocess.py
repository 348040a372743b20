"""vqclip.preprocess against transformers' CLIPImageProcessor (PIL backend), and bad input.

Tolerance: max abs 1e-5 after normalisation. Both sides resize the same uint8 image
with the same PIL filter, so pixels agree exactly; what is left is float32 rounding of
``(x / 255 - mean) / std`` (values up to ~2.2, float32 spacing ~2.4e-7) done in a
different order, well under 1e-5. A one-level pixel error is 1/255/0.27 ~ 0.015.

The reference differs from OpenAI's pipeline in two documented ways (see the
vqclip.preprocess docstring); the tests check each difference explicitly rather than
loosening the comparison:
- crop offset: where OpenAI's ``round`` and HF's floor disagree, we compare with HF's
  un-cropped output cropped at OpenAI's offset, and show HF's offset is one pixel off.
- transparency: the reference gets ``image.convert("RGB")`` (OpenAI's rule) for modes
  with alpha, and a separate test shows HF would composite onto white instead.
"""
from __future__ import annotations

import importlib.util
import io
import resource
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from vqclip.constants import OPENAI_MEAN, OPENAI_STD
from vqclip.errors import ImageDecodeError, InputShapeError
from vqclip.preprocess import DEFAULT_MAX_PIXELS, Preprocessor, load_image

TOL = 1e-5
SIZE = 224


@pytest.fixture(scope="module")
def hf():
    """OpenAI-configured CLIPImageProcessor on transformers' PIL (slow) path."""
    pytest.importorskip("transformers", reason="transformers (reference processor) not installed")
    try:  # transformers >= 5: the PIL backend is its own class
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4.x: the slow class is CLIPImageProcessor
        from transformers import CLIPImageProcessor as cls
    proc = cls(
        do_resize=True,
        size={"shortest_edge": SIZE},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": SIZE, "width": SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_MEAN),
        image_std=list(OPENAI_STD),
        do_convert_rgb=True,
    )
    return proc


def run_hf(proc, image: Image.Image, **overrides) -> np.ndarray:
    return proc(images=[image], return_tensors="np", **overrides)["pixel_values"][0]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: edges and texture for the filter to act on."""
    rng = np.random.default_rng(seed + width * 7919 + height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / max(width + height, 1)], -1)
    noisy = base * 200 + rng.integers(0, 56, size=(height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


def hf_crop_is_openai_crop(width: int, height: int) -> bool:
    pre = Preprocessor(SIZE)
    w, h = pre.resized_size(width, height)
    left, top, _, _ = pre.crop_box(w, h)
    return (left, top) == ((w - SIZE) // 2, (h - SIZE) // 2)


SIZES = [
    (224, 224), (640, 480), (480, 640), (1024, 768), (500, 375), (1920, 1080),
    (100, 50), (50, 100), (7, 5), (1, 1), (223, 223), (3, 400), (400, 3),
    (225, 223), (223, 225), (301, 300), (333, 517), (517, 333), (999, 1001), (256, 255),
    (224, 227), (229, 224), (224, 300), (450, 224),
]


def test_reference_is_the_pil_path(hf):
    assert "Fast" not in type(hf).__name__
    assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
    run_hf(hf, picture(300, 240))
    assert "torchvision" not in sys.modules  # nothing pulled in a torchvision-based path


def test_both_crop_rules_are_exercised():
    same = [s for s in SIZES if hf_crop_is_openai_crop(*s)]
    differ = [s for s in SIZES if not hf_crop_is_openai_crop(*s)]
    assert len(same) >= 15 and len(differ) >= 2, differ


@pytest.mark.parametrize("width,height", [s for s in SIZES if hf_crop_is_openai_crop(*s)])
def test_matches_hf_on_sizes(hf, width, height):
    im = picture(width, height)
    ours = Preprocessor(SIZE)(im)
    assert ours.shape == (1, 3, SIZE, SIZE) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], run_hf(hf, im), rtol=0, atol=TOL)


@pytest.mark.parametrize("width,height", [s for s in SIZES if not hf_crop_is_openai_crop(*s)])
def test_crop_offset_follows_openai_where_hf_floors(hf, width, height):
    im = picture(width, height)
    pre = Preprocessor(SIZE)
    ours = pre(im)[0]
    full = run_hf(hf, im, do_center_crop=False)  # (3, h, w): HF's resize and normalise
    h, w = full.shape[1:]
    assert (w, h) == pre.resized_size(width, height)
    left, top, right, bottom = pre.crop_box(w, h)
    np.testing.assert_allclose(ours, full[:, top:bottom, left:right], rtol=0, atol=TOL)
    # HF's own crop is one pixel up/left of OpenAI's here, and visibly different.
    assert ((left - (w - SIZE) // 2), (top - (h - SIZE) // 2)) in {(1, 0), (0, 1), (1, 1)}
    assert np.abs(ours - run_hf(hf, im)).max() > 0.01


def _mode_image(mode: str) -> Image.Image:
    rgb = picture(300, 200, seed=1)
    if mode == "P-transparent":
        im = rgb.quantize(64)
        im.info["transparency"] = 0
        return im
    if mode == "PA":
        return rgb.quantize(64).convert("PA")
    if mode == "I;16":
        wide = np.asarray(rgb.convert("L"), dtype=np.uint16) * 3  # values up to 765
        im = Image.fromarray(wide)
        assert im.mode == "I;16"
        return im
    if mode == "P":
        return rgb.quantize(64)
    im = rgb.convert(mode)
    if "A" in im.getbands():  # a real alpha channel, not all-opaque
        alpha = Image.fromarray((np.tile(np.arange(300)[None, :], (200, 1)) % 256).astype(np.uint8))
        im.putalpha(alpha)
    return im


NO_ALPHA_MODES = ["L", "P", "CMYK", "I;16", "1", "RGB", "YCbCr", "I", "F"]
ALPHA_MODES = ["LA", "RGBA", "P-transparent", "PA"]


@pytest.mark.parametrize("mode", NO_ALPHA_MODES)
def test_matches_hf_on_modes(hf, mode):
    im = _mode_image(mode)
    np.testing.assert_allclose(Preprocessor(SIZE)(im)[0], run_hf(hf, im), rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", ALPHA_MODES)
def test_alpha_modes_drop_alpha_like_openai(hf, mode):
    im = _mode_image(mode)
    # OpenAI's _convert_image_to_rgb. Pixels only: convert() of a transparent palette
    # image keeps info["transparency"] as an RGB colour, which HF would composite again.
    openai_rgb = Image.fromarray(np.asarray(im.convert("RGB")))
    np.testing.assert_allclose(Preprocessor(SIZE)(im)[0], run_hf(hf, openai_rgb), rtol=0, atol=TOL)


def test_hf_composites_alpha_on_white_unlike_openai(hf):
    im = Image.new("RGBA", (224, 224), (10, 20, 30, 0))  # fully transparent dark blue
    ours = Preprocessor(SIZE)(im)[0]
    expected_dark = (np.array([10, 20, 30]) / 255 - OPENAI_MEAN) / OPENAI_STD
    np.testing.assert_allclose(ours[:, 0, 0], expected_dark, atol=TOL)
    white = (1 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(run_hf(hf, im)[:, 0, 0], white, atol=TOL)


def _jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    picture(320, 240, seed=orientation).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg(hf, orientation):
    data = _jpeg_with_orientation(orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    loaded = load_image(data)
    assert loaded.size == ((240, 320) if orientation >= 5 else (320, 240))
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(upright.convert("RGB")))
    np.testing.assert_allclose(Preprocessor(SIZE)(data)[0], run_hf(hf, upright), rtol=0, atol=TOL)
    # an opened-but-not-transposed PIL image gets the same treatment
    opened = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(np.asarray(load_image(opened)), np.asarray(loaded))
    np.testing.assert_array_equal(Preprocessor(SIZE)(opened), Preprocessor(SIZE)(data))


def test_sources_path_bytes_file_and_pil_agree(tmp_path):
    im = picture(300, 260)
    path = tmp_path / "a.png"
    im.save(path)
    pre = Preprocessor(SIZE)
    with open(path, "rb") as f:
        batch = pre([str(path), path, path.read_bytes(), f, im])
    assert batch.shape == (5, 3, SIZE, SIZE)
    for i in range(1, 5):
        np.testing.assert_array_equal(batch[i], batch[0])
    assert pre([]).shape == (0, 3, SIZE, SIZE)


def test_other_sizes_and_stats(hf):
    im = picture(500, 400)
    pre = Preprocessor(336, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    ref = run_hf(
        hf, im, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    np.testing.assert_allclose(pre(im)[0], ref, rtol=0, atol=TOL)


def _png_bytes(width: int = 300, height: int = 200) -> bytes:
    buf = io.BytesIO()
    picture(width, height).save(buf, "PNG")
    return buf.getvalue()


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
    with pytest.raises(ImageDecodeError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(InputShapeError, match="fromarray"):
        load_image(np.zeros((4, 4, 3), np.uint8))


def test_batch_error_names_the_item():
    with pytest.raises(ImageDecodeError, match="batch item 1"):
        Preprocessor()([_png_bytes(), b"junk"])


@pytest.mark.parametrize(
    "kwargs", [{"size": 0}, {"interpolation": "cubic"}, {"mean": (0.5, 0.5)}, {"std": (0.5, 0.0, 0.5)}]
)
def test_bad_preprocessor_arguments(kwargs):
    with pytest.raises(InputShapeError):
        Preprocessor(**kwargs)


def _unnormalise(x: np.ndarray) -> np.ndarray:
    """float32 (3, S, S) normalised -> uint8-scale (S, S, 3), to compare with PIL's pixels."""
    mean, std = np.array(OPENAI_MEAN)[:, None, None], np.array(OPENAI_STD)[:, None, None]
    return ((x * std + mean) * 255).transpose(1, 2, 0)


def test_squash_resizes_both_sides_to_the_square():
    # OpenCLIP's "squash": torchvision Resize((S, S)) on the PIL image; nothing is cropped.
    img = Image.fromarray((np.random.default_rng(0).random((50, 120, 3)) * 255).astype(np.uint8))
    got = _unnormalise(Preprocessor(32, resize_mode="squash").transform(img))
    want = np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("width,height", [(120, 50), (50, 120), (33, 33)])
def test_longest_keeps_the_aspect_and_pads_around_the_centre(width, height):
    # OpenCLIP's "longest": ResizeKeepRatio(longest=1) (the short side rounded) then
    # CenterCropOrPad with fill_color, left/top padding (S - side) // 2.
    img = Image.fromarray((np.random.default_rng(1).random((height, width, 3)) * 255).astype(np.uint8))
    s, fill = 32, 17
    got = _unnormalise(Preprocessor(s, resize_mode="longest", fill=fill).transform(img))
    ratio = max(width, height) / s
    rw, rh = round(width / ratio), round(height / ratio)
    left, top = (s - rw) // 2, (s - rh) // 2
    inner = np.asarray(img.resize((rw, rh), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(got[top:top + rh, left:left + rw] - inner).max() < 1e-3
    pad = np.ones((s, s), bool)
    pad[top:top + rh, left:left + rw] = False
    assert (pad.any() == (rw < s or rh < s)) and np.abs(got[pad] - fill).max(initial=0) < 1e-3


def test_unknown_resize_mode_and_fill_are_refused():
    with pytest.raises(InputShapeError, match="resize_mode"):
        Preprocessor(resize_mode="stretch")
    with pytest.raises(InputShapeError, match="fill"):
        Preprocessor(fill=300)
