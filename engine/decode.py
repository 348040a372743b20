"""The parallel decode + preprocess pipeline the jobs share (one image at a time is
``vqclip.preprocess.load_image``).

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

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from vqclip._cpus import available_cpus
from vqclip._hashing import sha256_bytes
from vqclip.errors import ImageDecodeError
from vqclip.preprocess import load_image, read_image_file

log = logging.getLogger(__name__)

__all__ = ["Loaded", "Timings", "read_and_decode", "decode_batches", "default_workers"]

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
    data = read_image_file(path)  # regular files only, at most the byte limit
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
