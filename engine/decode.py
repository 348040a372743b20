"""The one image decoder, and the parallel decode + preprocess pipeline the jobs share.

- ``load_image`` decodes a path, bytes, file-like object or ``PIL.Image`` into an RGB
  image: EXIF orientation applied, any mode converted with ``Image.convert("RGB")`` as
  OpenAI's ``_convert_image_to_rgb`` does (transparency is dropped, not composited), a
  pixel-count limit checked from the header before any pixel is decoded, and every
  failure raised as ``ImageDecodeError``.
- ``read_and_decode`` reads a file once, hashes its bytes and decodes them (what an
  index needs to know of a file).
- ``decode_batches`` runs reads, decodes and preprocessing in worker threads (Pillow and
  numpy release the GIL for most of that work) while the caller encodes the previous
  batch, so on a machine where encoding dominates, decoding hides behind it. Results
  come back in input order; failures are reported per item.

Example::

    for items, loaded, pixels, bad in decode_batches(paths, read_and_decode, Preprocessor(224)):
        ...  # pixels float32 (b, 3, 224, 224) for the b items that decoded
"""
from __future__ import annotations

import io
import logging
import os
import struct
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vqclip._cpus import available_cpus
from vqclip._hashing import sha256_bytes
from vqclip.errors import ImageDecodeError, InputShapeError

log = logging.getLogger(__name__)

__all__ = ["ImageSource", "DEFAULT_MAX_PIXELS", "load_image", "Loaded", "Timings", "read_and_decode",
           "decode_batches", "default_workers"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

# Pillow's own warning threshold (Image.MAX_IMAGE_PIXELS as shipped): 2^30 / 4 / 3 pixels,
# the size whose decoded RGB needs 256 MiB. CLIP sees a 224-336 px crop, so a larger
# image buys nothing and lets one request take gigabytes when decoded in parallel;
# callers who need more pass max_pixels (Pillow itself refuses above twice its limit).
DEFAULT_MAX_PIXELS = 89_478_485


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
    elif isinstance(src, (str, os.PathLike)) or hasattr(src, "read"):
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



def default_workers() -> int:
    """Decode threads: all CPUs this process may use but one (the encoder's), at least 1, at most 8."""
    return max(1, min(8, available_cpus() - 1))


@dataclass
class Loaded:
    """One file read and decoded: its bytes' sha256 and size, and the PIL RGB image."""

    image: Any  # PIL.Image.Image, RGB
    sha256: str
    size: int


@dataclass
class Timings:
    """Seconds spent per stage. decode/preprocess are summed over worker threads, so with
    N workers they can exceed the wall time; ``encode_s`` is the caller's encode time,
    ``wait_s`` the time the caller sat blocked waiting for decoded images (the part of
    decoding that did not hide behind encoding) and ``commit_s`` its time writing results
    (index commits). ``wall_s - encode_s - wait_s - commit_s`` is the rest: walking the
    folder, batching, bookkeeping."""

    read_decode_s: float = 0.0
    preprocess_s: float = 0.0
    encode_s: float = 0.0
    wait_s: float = 0.0
    commit_s: float = 0.0
    wall_s: float = 0.0
    images: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, decode_s: float, preprocess_s: float) -> None:
        with self._lock:
            self.read_decode_s += decode_s
            self.preprocess_s += preprocess_s

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def read_and_decode(path: str) -> Loaded:
    """Read ``path`` once, hash its bytes and decode them (EXIF-transposed RGB).

    Raises ``ImageDecodeError`` for a file that cannot be read or decoded (unreadable,
    zero-size, truncated, over the pixel limit).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read the file ({e.strerror}); check it exists and is readable") from e
    if not data:
        raise ImageDecodeError(f"{path}: the file is empty (0 bytes); it holds no image")
    try:
        image = load_image(data)
    except ImageDecodeError as e:  # name the file, not the in-memory buffer it was decoded from
        raise ImageDecodeError(f"{path}: {e}") from e
    return Loaded(image=image, sha256=sha256_bytes(data), size=len(data))


def decode_batches(
    items: Iterable[Any],
    load: Callable[[Any], Loaded],
    preprocess: Callable[[list], np.ndarray],
    batch_size: int = 32,
    workers: int | None = None,
    timings: Timings | None = None,
) -> Iterator[tuple[list[Any], list[Loaded], np.ndarray | None, list[tuple[Any, str]]]]:
    """Yield ``(items, loaded, pixels, failures)`` per batch, in input order.

    ``pixels`` is float32 (b, 3, S, S) for the b items that decoded (None when none did);
    ``failures`` lists ``(item, reason)`` for those that raised ``ImageDecodeError``.
    At most ``3 * batch_size`` images are in flight, so memory stays bounded whatever
    the number of items.

    Example: ``for its, ld, px, bad in decode_batches(paths, lambda p: read_and_decode(p), pre): ...``
    """
    workers = workers or default_workers()
    timings = timings if timings is not None else Timings()

    def work(item: Any) -> tuple[Any, Loaded | None, np.ndarray | None, str | None]:
        t0 = time.perf_counter()
        try:
            loaded = load(item)
        except ImageDecodeError as e:
            timings.add(time.perf_counter() - t0, 0.0)
            return item, None, None, str(e)
        t1 = time.perf_counter()
        try:
            px = preprocess([loaded.image])[0]  # (3, S, S)
        except ImageDecodeError as e:
            return item, None, None, str(e)
        finally:
            timings.add(t1 - t0, time.perf_counter() - t1)
        loaded.image = None  # the pixels are all we keep; free the decoded image now
        return item, loaded, px, None

    window = max(3 * batch_size, workers)
    it = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vqclip-decode") as pool:
        def fill() -> None:
            while len(pending) < window:
                try:
                    pending.append(pool.submit(work, next(it)))
                except StopIteration:
                    return

        try:
            yield from _batches(pending, fill, batch_size, timings)
        finally:
            for f in pending:  # stopped early (error, interrupt): drop queued work
                f.cancel()


def _batches(pending: deque, fill: Callable[[], None], batch_size: int, timings: Timings):
    """Collect finished work in order into batches, refilling the window as it drains."""
    fill()
    while pending:
        b_items, b_loaded, b_px, b_bad = [], [], [], []
        while pending and len(b_items) + len(b_bad) < batch_size:
            t0 = time.perf_counter()
            item, loaded, px, err = pending.popleft().result()
            timings.wait_s += time.perf_counter() - t0
            fill()
            if err is None:
                b_items.append(item)
                b_loaded.append(loaded)
                b_px.append(px)
            else:
                b_bad.append((item, err))
        timings.failed += len(b_bad)
        timings.images += len(b_items)
        yield b_items, b_loaded, (np.stack(b_px) if b_px else None), b_bad
