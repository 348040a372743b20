"""The on-disk image index format: embeddings in a memory-mapped array, entries in SQLite.

Building and updating (walk, decode, encode) live in ``vqclip.index.build``; this module is
the storage and its commit protocol.

An index is a folder::

    header.json      format, version, model (name + weights digest), embed_dim, storage, image root
    entries.sqlite   entries(path, size, mtime_ns, sha256, row), skipped files, committed row count
    vectors.bin      rows of the embedding array, C order, (capacity, E) of the storage dtype
    norms.bin        float32 (capacity,) L2 norm of each stored row as stored (fp16/int8 rounding included)
    scales.bin       float32 (capacity,) per-row dequantisation scale (int8 storage only)

Storage types: ``fp32`` (4E bytes a row), ``fp16`` (2E), ``int8`` (E + 4; symmetric per-row
quantisation, ``x ~= q * scale``).

Commit protocol (what makes SIGKILL at any moment safe):

1. rows are written with ``pwrite`` into rows nobody references - holes left by deleted
   entries, or past the committed count - and the three array files are ``fsync``-ed;
2. one SQLite transaction (WAL, ``synchronous=FULL``) then inserts the entries pointing at
   those rows and raises ``committed_rows``.

A kill before step 2 leaves only unreferenced rows (garbage past the count, or holes),
which the next writer reuses; a kill after it leaves a complete batch. Every committed
entry therefore points at a durable row, and a rerun re-encodes only files with no
committed entry. Array files never shrink while the index exists (a reader may have them
mapped; shrinking a mapped file would fault it); a writer compacts by moving tail rows
into holes, under the same protocol, so committed rows stay dense in ``[0, count)``.

One writer at a time (``flock`` on ``write.lock``); readers never block and see the
committed state as of ``open()``.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TypeVar

import numpy as np

from vqclip._files import atomic_write_bytes
from vqclip.errors import IndexMismatchError, InvalidInputError, SearchIndexError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["STORAGE_TYPES", "KERNEL_DTYPES", "IMAGE_EXTENSIONS", "Header", "IndexStore", "build_beside", "check_model",
           "encode_rows", "decode_rows", "lock_index", "walk_images"]

FORMAT = "vqclip-index"
VERSION = 1
STORAGE_TYPES = ("fp32", "fp16", "int8")
_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- relative to the header's root, '/'-separated
    size INTEGER NOT NULL,          -- bytes
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,           -- of the file's bytes
    row INTEGER NOT NULL UNIQUE     -- row in vectors.bin, < committed_rows
);
CREATE TABLE IF NOT EXISTS skipped (  -- files that failed to decode, not retried until they change
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('committed_rows', 0);
"""


KERNEL_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}  # our names -> vqclip.kernels


def encode_rows(emb: np.ndarray, storage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """float32 (n, E) unit rows -> (rows in the storage dtype, float32 norms (n,), float32 scales (n,) or None).

    The kernels' own encoding (``vqclip.kernels.encode_rows``), so the index files are
    exactly the arrays a ``Gallery`` reads: int8 is symmetric per row (``max|x| -> 127``),
    norms are those of the rows as stored; a zero row stays zero with norm 0.
    """
    if storage not in KERNEL_DTYPES:
        raise InvalidInputError(f"storage {storage!r} is not one of {', '.join(STORAGE_TYPES)}")
    from vqclip.kernels import encode_rows as kernel_encode_rows

    return kernel_encode_rows(np.ascontiguousarray(emb, dtype=np.float32), KERNEL_DTYPES[storage])


def decode_rows(rows: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Stored rows (+ int8 scales) -> float32 (n, E), the inverse of ``encode_rows`` up to rounding."""
    x = np.asarray(rows, dtype=np.float32)
    return x * scales[:, None] if scales is not None else x


def walk_images(root: str | Path, exclude: Path | None = None) -> Iterator[tuple[str, Path | None, str | None]]:
    """Files under ``root``, recursively, following symlinked folders but never twice (no loops).

    Yields ``(relative posix path, absolute path or None, reason or None)``: a reason is given
    for a file that is not an image by its extension ("not an image") or cannot be stat-ed.
    ``exclude`` (e.g. the index folder itself) is not entered. Sorted per folder, so stable.
    """
    root = Path(root).resolve()
    seen: set[tuple[int, int]] = set()
    excl = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink: a loop or a duplicate
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if excl is None or (d / n).resolve() != excl)
        for name in sorted(filenames):
            p = d / name
            rel = p.relative_to(root).as_posix()
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                yield rel, None, "not an image (extension)"
            else:
                yield rel, p, None


def lock_index(path: Path) -> int:
    """The index's one-writer lock, taken without waiting: the locked file descriptor (closing
    it releases the lock); ``SearchIndexError`` when another process writes it or this user cannot."""
    try:
        fd = os.open(path / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as e:
        raise SearchIndexError(f"index {str(path)!r} is read-only for this user; search it here, update it "
                               "where it can be written") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise SearchIndexError(f"index {str(path)!r} is being written by another process; wait for it to finish") from e
    return fd


@dataclass
class Header:
    model_name: str
    model_digest: str
    embed_dim: int
    storage: str
    root: str  # absolute folder the entry paths are relative to
    created: str = ""
    model_config: str | None = None  # the zoo architecture named for a weights file that does not state it

    def to_json(self) -> bytes:
        model = {"name": self.model_name, "digest": self.model_digest}
        if self.model_config is not None:
            model["config"] = self.model_config
        d = {"format": FORMAT, "version": VERSION, "model": model,
             "embed_dim": self.embed_dim, "storage": self.storage, "root": self.root, "created": self.created}
        return (json.dumps(d, indent=2) + "\n").encode("utf-8")


@dataclass(slots=True)  # an update holds one per indexed file in memory
class Entry:
    path: str
    size: int
    mtime_ns: int
    sha256: str
    row: int


class IndexStore:
    """The files of one index folder: header, entries and the row arrays.

    ``IndexStore.create`` makes a new folder; ``IndexStore.open`` opens one for reading
    (``writable=False``, any number of processes) or for writing (one process, enforced by
    a lock). Readers see ``count`` committed rows, all live unless a writer is mid-update.
    """

    def __init__(self, path: Path, header: Header, writable: bool):
        self.path = path
        self.header = header
        self.writable = writable
        self._lock_fd: int | None = None
        self._local = threading.local()  # one read connection per thread (sqlite3 objects are per-thread)
        self._fds: dict[str, int] = {}
        if writable:
            self._take_lock()
        try:
            self._db = self._connect()  # the writer's connection, or the opening thread's reader
            if writable:
                self._db.executescript(_SCHEMA)
                for name in self._array_names():
                    self._fds[name] = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
            self.refresh()
        except (sqlite3.Error, ValueError, TypeError) as e:  # garbage, an empty file, no table, bad numbers
            self.close()
            raise SearchIndexError(f"index {str(path)!r} is damaged ({type(e).__name__}: {e}); rebuild it with "
                                   f"`vqclip index build DIR --out {path} --force`") from e

    # ----- opening -----
    @classmethod
    def create(cls, path: str | Path, *, model_name: str, model_digest: str, embed_dim: int,
               storage: str, root: str | Path, model_config: str | None = None) -> "IndexStore":
        """A new empty index at ``path`` (created; must not already hold an index or other files)."""
        if storage not in STORAGE_TYPES:
            raise InvalidInputError(f"storage {storage!r} is not one of {', '.join(STORAGE_TYPES)}")
        path = Path(path)
        if (path / "header.json").exists():
            raise SearchIndexError(f"{path} already holds an index; run `vqclip index update {path}` to refresh it, "
                                   "or build again with --force to replace it")
        if path.exists() and not path.is_dir():
            raise SearchIndexError(f"{path} is a file, not a folder; give a new folder for the index")
        # Left by a create that was killed before its header: entries.sqlite (empty), the
        # lock, a header temp file. Anything else means the folder is someone else's.
        if path.is_dir() and any(p.name not in ("entries.sqlite", "entries.sqlite-wal", "entries.sqlite-shm",
                                                "write.lock") and not p.name.startswith(".header.json.")
                                 for p in path.iterdir()):
            raise SearchIndexError(f"{path} is not empty and holds no index; give a new or empty folder")
        path.mkdir(parents=True, exist_ok=True)
        header = Header(model_name, model_digest, int(embed_dim), storage, str(Path(root).resolve()),
                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), model_config)
        db = sqlite3.connect(path / "entries.sqlite")
        try:
            db.executescript(_SCHEMA)
            db.commit()
        finally:
            db.close()
        # The header is written last: a folder with a header is a complete, openable index.
        atomic_write_bytes(path / "header.json", header.to_json())
        return cls(path, header, writable=True)

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> "IndexStore":
        """Open an existing index; ``SearchIndexError`` if ``path`` is missing or not an index."""
        path = Path(path)
        hp = path / "header.json"
        if not hp.is_file():
            what = "does not exist" if not path.exists() else "is not a vqclip index (no header.json)"
            raise SearchIndexError(f"index {str(path)!r} {what}; build one with `vqclip index build DIR --out {path}`")
        try:
            d = json.loads(hp.read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise ValueError(f"a JSON {type(d).__name__}, not an object")
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}")
            if d.get("version") != VERSION:
                raise ValueError(f"version {d.get('version')!r}, this vqclip reads version {VERSION}")
            header = Header(d["model"]["name"], d["model"]["digest"], int(d["embed_dim"]), d["storage"],
                            d["root"], d.get("created", ""), d["model"].get("config"))
            if header.storage not in STORAGE_TYPES:
                raise ValueError(f"storage {header.storage!r}")
            if header.embed_dim < 1 or header.embed_dim > 65536:
                raise ValueError(f"embed_dim {header.embed_dim}")
            if not all(isinstance(v, str) for v in (header.model_name, header.model_digest, header.root)):
                raise ValueError("model name, digest and root must be strings")
            if not isinstance(header.model_config, (str, type(None))):
                raise ValueError("model config must be a zoo name")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SearchIndexError(f"index {str(path)!r} has an unreadable header.json ({e}); rebuild it") from e
        return cls(path, header, writable)

    def _array_names(self) -> list[str]:
        return ["vectors.bin", "norms.bin"] + (["scales.bin"] if self.header.storage == "int8" else [])

    def _take_lock(self) -> None:
        self._lock_fd = lock_index(self.path)

    def _connect(self) -> sqlite3.Connection:
        dbp = self.path / "entries.sqlite"
        if self.writable:
            db = sqlite3.connect(dbp, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a kill
        else:
            if not dbp.is_file():
                raise SearchIndexError(f"index {str(self.path)!r} has no entries.sqlite; rebuild it")
            db = sqlite3.connect(f"file:{dbp}?mode=ro", uri=True, check_same_thread=False)
            try:
                db.execute("SELECT 1 FROM meta LIMIT 1")
            except sqlite3.OperationalError as e:
                code = getattr(e, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
                if code not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
                    raise
                # A folder this user cannot write (a shared volume, a container image), so WAL's
                # shared-memory file cannot be made: read the file as it stands. Commits its owner
                # makes meanwhile are seen when the index is opened again.
                db.close()
                db = sqlite3.connect(f"file:{dbp}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _reader(self) -> sqlite3.Connection:
        if self.writable:
            return self._db
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if getattr(self, "_db", None) is not None:
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- reading -----
    def refresh(self) -> None:
        """Re-read the committed count and map the arrays (a reader's view of a new commit)."""
        db = self._reader()
        self.count = int(db.execute("SELECT value FROM meta WHERE key='committed_rows'").fetchone()[0])
        self.n_entries = int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        if self.count < 0:
            raise ValueError(f"committed_rows {self.count}")
        bad = db.execute("SELECT path, row FROM entries WHERE row < 0 OR row >= ? LIMIT 1", (self.count,)).fetchone()
        if bad is not None:
            raise ValueError(f"entry {bad[0]!r} points at row {bad[1]}, outside the {self.count} committed rows")
        E, dt = self.header.embed_dim, _DTYPES[self.header.storage]
        need = {"vectors.bin": self.count * E * np.dtype(dt).itemsize, "norms.bin": 4 * self.count,
                "scales.bin": 4 * self.count}
        for name in self._array_names():
            p = self.path / name
            have = p.stat().st_size if p.exists() else 0
            if have < need[name]:
                raise SearchIndexError(f"index {str(self.path)!r}: {name} holds {have} bytes, the committed "
                                       f"entries need {need[name]}; the file was damaged, rebuild the index")
        self.vectors = self._map("vectors.bin", dt, (self.count, E))
        self.norms = self._map("norms.bin", np.float32, (self.count,))
        self.scales = self._map("scales.bin", np.float32, (self.count,)) if self.header.storage == "int8" else None

    def _map(self, name: str, dtype, shape: tuple) -> np.ndarray:
        if shape[0] == 0:  # mmap cannot map zero bytes
            return np.zeros(shape, dtype=dtype)
        return np.memmap(self.path / name, dtype=dtype, mode="r", shape=shape)

    @property
    def holes(self) -> int:
        """Committed rows that no entry points at (only mid-update; a finished update leaves none)."""
        return self.count - self.n_entries

    def check_model(self, digest: str, name: str, config: dict | None = None) -> None:
        """Refuse a model other than the one that built the index, naming both (``check_model``)."""
        check_model(str(self.path), self.header, digest, name, config)

    def entries(self) -> dict[str, Entry]:
        rows = self._reader().execute("SELECT path, size, mtime_ns, sha256, row FROM entries").fetchall()
        return {r[0]: Entry(*r) for r in rows}

    def paths_for_rows(self, rows: list[int]) -> dict[int, str]:
        """{row: relative path} for those of ``rows`` that hold a committed entry."""
        if not rows:
            return {}
        q = f"SELECT row, path FROM entries WHERE row IN ({','.join('?' * len(rows))})"
        found = dict(self._reader().execute(q, [int(r) for r in rows]).fetchall())
        for rel in found.values():
            self._check_entry_path(rel)
        return found

    def _check_entry_path(self, rel: object) -> None:
        """Refuse an entry path that could name a file outside the root: an index only ever
        writes relative paths without '..' (a hostile or damaged one may hold anything)."""
        p = PurePosixPath(rel) if isinstance(rel, str) else None
        if p is None or not rel or "\0" in rel or p.is_absolute() or ".." in p.parts:
            raise SearchIndexError(f"index {str(self.path)!r} has an entry path {rel!r} outside its image folder; "
                                   "the index is damaged or was tampered with: rebuild it")

    def skipped(self) -> dict[str, tuple[int, int, str]]:
        return {r[0]: (r[1], r[2], r[3]) for r in
                self._reader().execute("SELECT path, size, mtime_ns, reason FROM skipped").fetchall()}

    def absolute(self, rel: str) -> str:
        return str(Path(self.header.root) / rel)

    # ----- writing (one process, under the lock) -----
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error or interrupt."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _require_writable(self) -> None:
        if not self.writable:
            raise SearchIndexError(f"index {str(self.path)!r} was opened read-only")

    def free_rows(self) -> list[int]:
        """Holes in ``[0, count)``, ascending: reusable without touching committed data."""
        used = np.fromiter((r for (r,) in self._db.execute("SELECT row FROM entries")), dtype=np.int64)
        mask = np.ones(self.count, dtype=bool)
        mask[used[used < self.count]] = False
        return np.flatnonzero(mask).tolist()

    def _pwrite_rows(self, rows: list[int], emb: np.ndarray) -> None:
        vec, norms, scales = encode_rows(emb, self.header.storage)
        arrays = {"vectors.bin": vec, "norms.bin": norms, "scales.bin": scales}
        for name in self._array_names():
            a = arrays[name]
            rb = a[0].nbytes if a.ndim > 1 else a.itemsize
            for i, r in _runs(rows):  # contiguous runs of rows go in one write
                n = len(r)
                os.pwrite(self._fds[name], np.ascontiguousarray(a[i:i + n]).tobytes(), r[0] * rb)
        for name in self._array_names():
            os.fsync(self._fds[name])

    def add(self, entries: list[tuple[str, int, int, str]], emb: np.ndarray, free: list[int]) -> None:
        """Commit one batch: ``entries`` (path, size, mtime_ns, sha256) with their float32
        (n, E) unit embeddings. Rows come from ``free`` (holes, consumed) then past ``count``.
        An entry whose path exists already replaces it (its old row becomes a hole, appended
        to ``free`` after the commit)."""
        self._require_writable()
        n = len(entries)
        if emb.shape != (n, self.header.embed_dim):
            raise SearchIndexError(f"embeddings of shape {emb.shape} for {n} entries of size {self.header.embed_dim}")
        take = min(n, len(free))
        rows = free[:take] + list(range(self.count, self.count + n - take))
        self._pwrite_rows(rows, emb)  # step 1: rows nobody references, made durable
        new_count = max(self.count, rows[-1] + 1) if rows else self.count
        paths = [e[0] for e in entries]
        with self._tx() as db:  # step 2: one transaction publishes the batch
            replaced = [r for chunk in _chunks(paths, 500) for (r,) in db.execute(
                f"SELECT row FROM entries WHERE path IN ({','.join('?' * len(chunk))})", chunk)]
            if replaced:  # changed files: the new row replaces the old, which becomes a hole
                db.executemany("DELETE FROM entries WHERE path=?", [(p,) for p in paths])
            db.executemany("INSERT INTO entries (path, size, mtime_ns, sha256, row) VALUES (?,?,?,?,?)",
                           [(*e, row) for e, row in zip(entries, rows)])
            db.executemany("DELETE FROM skipped WHERE path=?", [(p,) for p in paths])
            db.execute("UPDATE meta SET value=? WHERE key='committed_rows'", (new_count,))
        del free[:take]
        free.extend(replaced)
        free.sort()
        self.count = new_count
        self.n_entries += n - len(replaced)

    def remove(self, paths: list[str]) -> list[int]:
        """Delete the entries of ``paths`` (one transaction); returns the rows they freed."""
        self._require_writable()
        freed = []
        with self._tx() as db:
            for p in paths:
                r = db.execute("SELECT row FROM entries WHERE path=?", (p,)).fetchone()
                if r is not None:
                    freed.append(r[0])
                    db.execute("DELETE FROM entries WHERE path=?", (p,))
                db.execute("DELETE FROM skipped WHERE path=?", (p,))
        self.n_entries -= len(freed)
        return freed

    def touch(self, items: list[tuple[str, int, int]]) -> None:
        """Record a new (size, mtime_ns) for entries whose bytes did not change."""
        self._require_writable()
        with self._tx() as db:
            db.executemany("UPDATE entries SET size=?, mtime_ns=? WHERE path=?", [(s, m, p) for p, s, m in items])

    def mark_skipped(self, items: list[tuple[str, int, int, str]]) -> None:
        """Remember files that failed to decode (path, size, mtime_ns, reason) so that an
        update does not retry them until they change."""
        self._require_writable()
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO skipped (path, size, mtime_ns, reason) VALUES (?,?,?,?)", items)

    def compact(self) -> int:
        """Move the last rows into the holes so committed rows are dense again; returns the
        new count. Same protocol as ``add``: copy into unreferenced rows, fsync, then one
        transaction re-points the entries and lowers the count."""
        self._require_writable()
        free = self.free_rows()
        if not free:
            return self.count
        live = self.count - len(free)
        holes = [r for r in free if r < live]  # holes inside the final range get filled
        fset = set(free)
        movers = [r for r in range(live, self.count) if r not in fset]  # live rows past the end
        assert len(holes) == len(movers), (len(holes), len(movers))
        if movers:
            for name in self._array_names():
                a = self._map(name, _DTYPES[self.header.storage] if name == "vectors.bin" else np.float32,
                              (self.count, self.header.embed_dim) if name == "vectors.bin" else (self.count,))
                rb = a[0].nbytes if a.ndim > 1 else a.itemsize
                for src, dst in zip(movers, holes):
                    os.pwrite(self._fds[name], np.ascontiguousarray(a[src]).tobytes(), dst * rb)
                del a
                os.fsync(self._fds[name])
        with self._tx() as db:
            db.executemany("UPDATE entries SET row=? WHERE row=?", list(zip(holes, movers)))
            db.execute("UPDATE meta SET value=? WHERE key='committed_rows'", (live,))
        self.refresh()
        return live


def build_beside(out: str | Path, make: Callable[[Path], T]) -> T:
    """Run ``make(folder)`` on a new sibling folder of ``out``, then put it in ``out``'s place:
    an index already there (a damaged one included) is kept until the new one is whole, and a
    writer holding it is waited for, not run over. A failed ``make`` leaves ``out`` as it was."""
    out = Path(out)
    lock = lock_index(out) if (out / "header.json").is_file() else None
    try:
        stamp = f"{os.getpid()}-{int(time.time())}"
        new, old = out.with_name(f".{out.name}.new-{stamp}"), out.with_name(f".{out.name}.old-{stamp}")
        try:
            result = make(new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        if out.exists():
            out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        if lock is not None:
            os.close(lock)


def check_model(where: str, header: Header, digest: str, name: str, config: dict | None = None) -> None:
    """Refuse a model other than the one that built the index at ``where``, naming both: other
    weights, or the same weights built as another architecture than the header's ``--arch``."""
    if digest != header.model_digest:
        raise IndexMismatchError(
            f"index {where!r} was built with {header.model_name} (weights sha256 "
            f"{header.model_digest[:12]}), not {name} (weights sha256 {digest[:12]}); "
            "search it with its own model or build a new index")
    arch = header.model_config
    if arch is not None and config is not None:
        from vqclip.models.configs import CLIPConfig
        from vqclip.zoo import get

        if CLIPConfig.from_dict(config) != get(arch, family="clip").config:
            raise IndexMismatchError(
                f"index {where!r} was built with {header.model_name} as architecture {arch}, "
                f"not the architecture {name} was opened with; open it with --arch {arch} (config={arch!r})")


def _chunks(items: list, n: int) -> Iterator[list]:
    """Consecutive slices of at most ``n`` items (SQLite caps the parameters per statement)."""
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _runs(rows: list[int]) -> Iterator[tuple[int, list[int]]]:
    """Split ``rows`` into runs of consecutive numbers: yields (offset in rows, run)."""
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j] == rows[j - 1] + 1:
            j += 1
        yield i, rows[i:j]
        i = j

