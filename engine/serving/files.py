"""Image files of a loaded index, served only from inside its root folder.

A client names an index and a row, never a path: the path comes from the index's own
entry, is resolved (every symlink followed) and must land inside the resolved root,
and the file opened must be a regular file under the size limit (a FIFO or device would
block or never end). An index whose entries were tampered with (``../../etc/passwd``, a
symlink out of the root) gets a 403, not the file.
"""
from __future__ import annotations

import errno
import io
import mimetypes
import threading
from collections import OrderedDict
from pathlib import Path

from vqclip._files import NotRegularFileError, read_regular
from vqclip.preprocess import load_image
from vqclip.serving.responses import ApiError
from vqclip.serving.runtime import LoadedIndex

__all__ = ["entry_path", "read_inside", "media_type", "Thumbnails", "IMAGE_TYPES"]

# What /file may label its bytes as; anything else goes out as a download, never rendered.
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}


def entry_path(li: LoadedIndex, row: int) -> str:
    """The index entry's path (relative to the root) of ``row``; 404 when the row holds none."""
    if not 0 <= row < li.index.store.count:
        raise ApiError(404, f"row {row} is not in index {li.name!r} (rows 0-{li.index.store.count - 1})", "not_found")
    path = li.index.store.paths_for_rows([row]).get(row)
    if path is None:
        raise ApiError(404, f"row {row} of index {li.name!r} holds no entry", "not_found")
    return path


def read_inside(root: Path, rel: str, max_bytes: int) -> tuple[Path, bytes]:
    """The bytes of ``root / rel`` if it resolves inside ``root`` and is a regular file of at
    most ``max_bytes``; ``ApiError`` 403 / 404 / 413 otherwise. Blocking: call it off the loop."""
    try:
        real_root = root.resolve(strict=True)
        target = (real_root / rel).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise ApiError(404, f"the file of entry {rel!r} is missing", "not_found") from None
    if not target.is_relative_to(real_root):
        raise ApiError(403, f"entry {rel!r} resolves outside the index's root folder; refused", "forbidden")
    try:  # not following links: one swapped in after resolve() is refused
        return target, read_regular(target, max_bytes, follow_symlinks=False)
    except NotRegularFileError:
        raise ApiError(403, f"entry {rel!r} is not a regular file; refused", "forbidden") from None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise ApiError(413, f"the file of entry {rel!r} is more than the limit of {max_bytes:,} bytes",
                           "file_too_large") from None
        raise ApiError(404, f"the file of entry {rel!r} cannot be opened ({e.strerror})", "not_found") from None


def media_type(path: Path) -> str | None:
    """The image type of ``path`` by its name, or None (serve as a download)."""
    kind = mimetypes.guess_type(path.name)[0]
    return kind if kind in IMAGE_TYPES else None


class Thumbnails:
    """JPEG thumbnails of index entries, made on first request and kept in a bounded LRU."""

    def __init__(self, side: int, max_pixels: int, max_bytes: int, capacity: int = 1024):
        self.side = side
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, li: LoadedIndex, row: int) -> bytes:
        """The thumbnail of ``row`` (blocking: decode and resize). Raises ``ApiError`` as
        ``read_inside`` does, and ``ImageDecodeError`` (a 400) for a file that does not decode."""
        key = (li.name, row)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        _, data = read_inside(li.root, entry_path(li, row), self.max_bytes)
        image = load_image(data, self.max_pixels)  # ImageDecodeError -> the error handlers' 400
        image.thumbnail((self.side, self.side))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        jpeg = buf.getvalue()
        with self._lock:
            self._cache[key] = jpeg
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return jpeg
