"""Image decoding and CLIP's image preprocessing, at parity with OpenAI's pipeline.

Two jobs, in the order data flows:

- ``load_image`` decodes a path, bytes, file-like object or ``PIL.Image`` into an RGB
  image: EXIF orientation applied, any mode converted with ``Image.convert("RGB")`` as
  OpenAI's ``_convert_image_to_rgb`` does (transparency is dropped, not composited), a
  pixel-count limit checked from the header before any pixel is decoded, and every
  failure raised as ``ImageDecodeError``. (Many files at once, in parallel with the
  encoder: ``vqclip.decode``.)
- ``Preprocessor`` turns RGB images into the image encoder's input, float32
  ``[B, 3, S, S]``: resize the short side to ``S`` with PIL's bicubic filter (the long
  side is ``int(S * long / short)``), centre crop ``S x S`` at OpenAI's offset
  ``int(round((h - S) / 2))``, scale to [0, 1], normalise with the model's mean/std.

Two places where Hugging Face's ``CLIPImageProcessor`` (transformers 5.x, PIL backend)
is not OpenAI's pipeline, found by ``tests/test_preprocess.py``; vqclip follows OpenAI,
whose models these are:

- crop offset: HF floors ``(h - S) // 2``; OpenAI (torchvision's ``CenterCrop``) rounds
  half to even, so when ``h - S`` is odd and ``(h - S) // 2`` is odd the crops differ
  by one pixel (e.g. an image resized to 224 x 227).
- transparency: HF composites RGBA/LA/PA and transparent-palette images onto white;
  OpenAI's ``convert("RGB")`` keeps the colour under the transparent pixels.

Example:
    >>> from vqclip.preprocess import Preprocessor
    >>> Preprocessor()(["cat.jpg", open("dog.png", "rb").read()]).shape
    (2, 3, 224, 224)
"""
from __future__ import annotations

import errno
import io
import os
import struct
from collections.abc import Sequence
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vqclip._files import NotRegularFileError, read_regular
from vqclip.constants import OPENAI_MEAN, OPENAI_STD
from vqclip.errors import ImageDecodeError, InputShapeError, InvalidInputError

__all__ = ["ImageSource", "Preprocessor", "load_image", "read_image_file", "DEFAULT_MAX_PIXELS",
           "DEFAULT_MAX_BYTES", "INTERPOLATIONS"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

# Pillow's own warning threshold (Image.MAX_IMAGE_PIXELS as shipped): 2^30 / 4 / 3 pixels,
# the size whose decoded RGB needs 256 MiB. CLIP sees a 224-336 px crop, so a larger
# image buys nothing and lets one request take gigabytes when decoded in parallel;
# callers who need more pass max_pixels (Pillow itself refuses above twice its limit).
DEFAULT_MAX_PIXELS = 89_478_485
# Bytes read from one image file at most: far above any real photo (a 90-megapixel PNG is
# ~270 MB uncompressed, far less encoded), so /dev/zero or a huge non-image stops here.
DEFAULT_MAX_BYTES = 512 << 20

# What Pillow raises on corrupt data, by plugin: OSError (truncated, decoder errors),
# SyntaxError (bad headers), ValueError / struct.error (bad fields), EOFError (short
# reads), DecompressionBombError (over Pillow's global limit).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def _describe(src: object) -> str:
    """A short name for a source, for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return repr(os.fspath(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size[0]}x{src.size[1]}>"
    name = getattr(src, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(src).__name__}>"


def _check_size(im: Image.Image, what: str, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image {what} is {w}x{h} pixels, expected at least 1x1; pass a non-empty image")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"image {what} is {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,}; "
            f"downscale it first or pass a larger max_pixels"
        )


def _to_rgb(im: Image.Image, copy: bool = True) -> Image.Image:
    """EXIF-upright RGB version of a decoded image.

    With ``copy=False`` an upright RGB input is returned as is (the preprocessing path,
    which only reads it); otherwise the result is never the input object.
    """
    if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        im = ImageOps.exif_transpose(im)  # a new image, orientation tag removed
    elif im.mode == "RGB":
        return im.copy() if copy else im
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, *, copy: bool = True) -> Image.Image:
    """Decode ``src`` into an upright RGB ``PIL.Image``.

    Args:
        src: a file path, the encoded bytes, a binary file-like object (read from its
            current position), or a ``PIL.Image`` (not modified; a converted copy is
            returned). Any format and mode Pillow reads: L, LA, P (with transparency),
            RGBA, CMYK, I;16, 1, ... become RGB by ``Image.convert("RGB")``; animated
            images give their first frame.
        max_pixels: refuse images with more pixels than this, judged from the header
            before any pixel is decoded (a decompression-bomb guard).
        copy: False lets an upright RGB ``PIL.Image`` through uncopied (for callers that
            only read it, as preprocessing does).

    Returns: an RGB image, EXIF orientation applied (``ImageOps.exif_transpose``); a new
    one unless ``copy`` is False and the input was already upright RGB.

    Raises:
        ImageDecodeError: the file cannot be read, is not an image, is truncated or
            corrupt, has zero width or height, or has more than ``max_pixels`` pixels.
        InputShapeError: ``src`` is of a type that is none of the above.

    Example: ``load_image("photo.jpg").mode`` -> ``"RGB"``.
    """
    what = _describe(src)
    if isinstance(src, Image.Image):
        _check_size(src, what, max_pixels)
        try:
            return _to_rgb(src, copy)
        except _DECODE_ERRORS as e:
            raise ImageDecodeError(f"image {what} cannot be converted to RGB ({e}); pass an RGB image") from e

    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: object = io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        fp = io.BytesIO(read_image_file(src))
    elif hasattr(src, "read"):
        fp = src
    else:
        raise InputShapeError(
            f"image source is {type(src).__name__}, expected a path, bytes, a binary file "
            f"object or a PIL.Image; for an array use PIL.Image.fromarray first"
        )
    try:
        with Image.open(fp) as im:  # reads the header only
            _check_size(im, what, max_pixels)
            im.load()
            return _to_rgb(im)
    except FileNotFoundError as e:
        raise ImageDecodeError(f"image {what} does not exist; check the path") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(
            f"image {what} is not an image Pillow can read (unknown format, corrupt or "
            f"zero-sized header); pass a JPEG, PNG, WebP, GIF, BMP or TIFF file"
        ) from e
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(
            f"image {what} cannot be decoded ({type(e).__name__}: {e}); the file is "
            f"truncated, corrupt or unreadable, re-export or re-download it"
        ) from e




def max_image_bytes() -> int:
    """The byte limit for one image file: ``VQCLIP_MAX_IMAGE_BYTES`` if set, else the default."""
    raw = os.environ.get("VQCLIP_MAX_IMAGE_BYTES")
    if raw is None:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidInputError(f"VQCLIP_MAX_IMAGE_BYTES={raw!r} is not a whole number of bytes >= 1")
    return value


def read_image_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), never blocking on a FIFO
    and never reading more than ``max_bytes`` (default ``max_image_bytes()``).

    Raises ``ImageDecodeError`` for a file that is missing, unreadable, not a regular file
    (a FIFO, socket, device or folder: said which), empty, or over the limit.
    """
    limit = max_image_bytes() if max_bytes is None else max_bytes
    name = os.fspath(path)
    try:
        data = read_regular(path, limit)
    except FileNotFoundError as e:
        raise ImageDecodeError(f"{name}: the file does not exist; check the path") from e
    except NotRegularFileError as e:
        raise ImageDecodeError(f"{name}: {e.strerror}; give an image file") from e
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise ImageDecodeError(f"{name}: {e.strerror} for an image; set VQCLIP_MAX_IMAGE_BYTES higher if it "
                                   "really is one") from e
        raise ImageDecodeError(f"{name}: cannot read the file ({e.strerror}); check it is readable") from e
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); it holds no image")
    return data


INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,  # OpenAI CLIP, OpenCLIP defaults
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# How the image becomes S x S, as OpenCLIP's preprocess_cfg names it: OpenAI's short side +
# centre crop; "squash", both sides to S (aspect ratio lost); "longest", the long side to S and
# the rest padded with ``fill`` around the centre (OpenCLIP's ResizeKeepRatio + CenterCropOrPad).
RESIZE_MODES = ("shortest", "squash", "longest")


class Preprocessor:
    """CLIP image preprocessing: resize short side, centre crop, scale, normalise.

    Args:
        size: output side ``S`` (224 for ViT-B/32, B/16, L/14; 336 for L/14@336).
        mean, std: per-channel RGB statistics on the [0, 1] scale; OpenAI's by default
            (take a model's from ``vqclip.zoo.get(name).weights``).
        interpolation: PIL filter for the resize, one of ``INTERPOLATIONS``.
        max_pixels: decompression-bomb limit passed to ``load_image``.
        resize_mode: one of ``RESIZE_MODES`` (the models of OpenCLIP's configs that were
            trained with "squash" or "longest" need theirs); ``fill``: the padding's grey level.

    Example:
        >>> pre = Preprocessor(size=224)
        >>> x = pre(["a.jpg", "b.png"])  # float32 (2, 3, 224, 224)
    """

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        interpolation: str = "bicubic",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        resize_mode: str = "shortest",
        fill: int = 0,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputShapeError(f"size={size!r}, expected a positive int such as 224")
        if interpolation not in INTERPOLATIONS:
            raise InputShapeError(
                f"interpolation={interpolation!r}, expected one of {sorted(INTERPOLATIONS)}"
            )
        if resize_mode not in RESIZE_MODES:
            raise InputShapeError(f"resize_mode={resize_mode!r}, expected one of {list(RESIZE_MODES)}")
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
            raise InputShapeError(f"fill={fill!r}, expected a grey level 0..255")
        mean_a = np.asarray(mean, dtype=np.float32).reshape(-1)
        std_a = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean_a.shape != (3,) or std_a.shape != (3,) or not (std_a > 0).all():
            raise InputShapeError(
                f"mean={tuple(mean)} std={tuple(std)}, expected three values each, std > 0"
            )
        self.size = size
        self.mean = tuple(float(m) for m in mean_a)
        self.std = tuple(float(s) for s in std_a)
        self.interpolation = interpolation
        self.resize_mode, self.fill = resize_mode, fill
        self.max_pixels = max_pixels
        self._resample = INTERPOLATIONS[interpolation]
        self._mean = mean_a
        self._std = std_a
        # Every uint8 value's normalised float32, computed with the same float32 operations
        # (x / 255 - mean) / std that the formula applies per pixel, so a table lookup gives
        # identical bits with one gather per channel instead of three float passes.
        levels = np.arange(256, dtype=np.float32)[None, :]  # (1, 256)
        self._lut = np.ascontiguousarray((levels / 255.0 - mean_a[:, None]) / std_a[:, None])  # (3, 256)

    def __repr__(self) -> str:
        return (
            f"Preprocessor(size={self.size}, mean={self.mean}, std={self.std}, "
            f"interpolation={self.interpolation!r}, resize_mode={self.resize_mode!r})"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the short side is resized to ``size``, long side floored."""
        s = self.size
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop of a ``width x height`` image.

        OpenAI's rule, ``int(round((h - S) / 2))``: Python rounds halves to even. An image
        smaller than ``S`` on a side (impossible after ``resized_size``) is not padded.
        """
        s = self.size
        left = int(round((width - s) / 2.0))
        top = int(round((height - s) / 2.0))
        return left, top, left + s, top + s

    def transform(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """One RGB image -> float32 ``[3, S, S]``, normalised (written into ``out`` if given)."""
        if image.mode != "RGB":
            raise InputShapeError(f"image mode is {image.mode}, expected RGB; pass it through load_image first")
        s = self.size
        if self.resize_mode == "squash":
            square = image.resize((s, s), resample=self._resample)
        elif self.resize_mode == "longest":
            w, h = image.size
            ratio = max(w / s, h / s)  # the long side becomes S; OpenCLIP rounds the other
            rw, rh = round(w / ratio), round(h / ratio)
            square = Image.new("RGB", (s, s), (self.fill,) * 3)
            square.paste(image.resize((rw, rh), resample=self._resample), ((s - rw) // 2, (s - rh) // 2))
        else:
            resized = image.resize(self.resized_size(*image.size), resample=self._resample)
            square = resized.crop(self.crop_box(*resized.size))
        return self._normalise(np.asarray(square), out)  # (3, S, S)

    def _normalise(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, H, W), ``(x / 255 - mean) / std`` per channel, into
        ``out`` when given."""
        if out is None:
            out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)  # (3, H, W)
        for c in range(3):
            np.take(self._lut[c], rgb[:, :, c], out=out[c], mode="clip")  # uint8: never clips; "raise" would buffer
        return out

    def __call__(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Images -> float32 ``[B, 3, S, S]``, normalised, in input order.

        Accepts one source or a list of them (anything ``load_image`` takes); each is
        decoded with ``load_image`` (decode many in parallel with
        ``vqclip.decode.decode_batches``). An empty list gives shape ``(0, 3, S, S)``.

        Raises ``ImageDecodeError`` naming the position of the first bad image.
        """
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)) or hasattr(
            images, "read"
        ):
            images = [images]
        elif not isinstance(images, Sequence):
            raise InputShapeError(
                f"images is {type(images).__name__}, expected one image source or a list of them"
            )
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)  # (B, 3, S, S)
        for i, src in enumerate(images):
            try:
                rgb = load_image(src, self.max_pixels, copy=False)  # only read below
            except ImageDecodeError as e:
                raise ImageDecodeError(f"batch item {i}: {e}") from e
            self.transform(rgb, out[i])
        return out
