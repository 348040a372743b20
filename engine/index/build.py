"""Building and updating an image index: walk a folder, decode in parallel, encode in
batches, commit each batch (the storage and its crash-safe commit protocol are in
``vqclip.index.store``, the reader in ``vqclip.index.reader``).

``build_index`` makes a new index; ``update_index`` brings one up to date with its
folder: new and changed files are encoded, deleted ones dropped, unchanged ones left
alone (same size and mtime; or same bytes, checked by sha256 when only the mtime
moved). Files that fail to decode are skipped, counted, and remembered so the next
update does not retry them until they change. Either can be killed at any moment;
rerunning ``update_index`` finishes the work without re-encoding committed entries.

Example::

    enc = open_encoder("shapes-clip")
    report = build_index("photos/", "photos.vqindex", enc, storage="fp16")
    report.added, report.failed    # 1200, [("broken.jpg", "...truncated...")]
"""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vqclip._hashing import sha256_file
from vqclip.decode import Loaded, Timings, decode_batches, read_and_decode
from vqclip.encoder import Encoder
from vqclip.errors import InvalidInputError, SearchIndexError
from vqclip.index.store import IMAGE_EXTENSIONS, IndexStore, build_beside, walk_images

log = logging.getLogger(__name__)

_COMMIT_SECONDS = 2.0  # longest a finished encoding waits to be committed

__all__ = ["IndexReport", "build_index", "update_index"]


@dataclass
class IndexReport:
    """What one build/update did. ``failed`` lists (relative path, reason) of images that
    could not be decoded this run; ``not_images`` counts files skipped by extension."""

    added: int = 0  # new files encoded
    updated: int = 0  # changed files re-encoded
    removed: int = 0  # entries dropped because their file is gone
    unchanged: int = 0  # entries kept as they were (incl. touched-only files)
    touched: int = 0  # files whose mtime changed but bytes did not: not re-encoded
    not_images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    still_failing: int = 0  # files that failed before and have not changed since: not retried
    total: int = 0  # entries in the index afterwards
    timings: Timings = field(default_factory=Timings)

    def summary(self) -> str:
        t = self.timings
        rate = f", {t.images / t.wall_s:.1f} images/s" if t.wall_s > 0 and t.images else ""
        return (f"{self.total} entries: {self.added} added, {self.updated} updated, {self.removed} removed, "
                f"{self.unchanged} unchanged; skipped {self.not_images} non-images and "
                f"{len(self.failed) + self.still_failing} unreadable images{rate}")


def build_index(folder: str | Path, out: str | Path, encoder: Encoder, storage: str = "fp16",
                batch_size: int = 32, workers: int | None = None, progress: bool | None = None,
                commit_every: int = 256, force: bool = False) -> IndexReport:
    """Index every image under ``folder`` (recursively) into a new index folder ``out``.

    ``storage``: "fp32", "fp16" (default: half the disk, cosine error ~1e-3) or "int8".
    Encoded images are committed every ``commit_every`` images or 2 seconds, whichever
    comes first; a kill loses at most that much encoding, never committed entries.
    Raises ``SearchIndexError`` if ``out`` already holds an index (use ``update_index``, or
    ``force`` to build a new one in its place: only a vqclip index is ever replaced, and only
    once the new one is complete) and ``InvalidInputError`` if ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder; give the folder of images to index")
    out = Path(out)
    if force and (out / "header.json").is_file():
        return build_beside(out, lambda new: build_index(folder, new, encoder, storage, batch_size, workers, progress,
                                                         commit_every))
    embed_dim = encoder.embed_dim or encoder.encode_texts(["a"]).shape[1]  # an encoder made by hand may not say
    store = IndexStore.create(out, model_name=encoder.identity.name, model_digest=encoder.identity.digest,
                              embed_dim=embed_dim, storage=storage, root=folder,
                              model_config=encoder.architecture)
    try:
        return _sync(store, encoder, batch_size, workers, progress, commit_every)
    finally:
        store.close()


def update_index(path: str | Path, encoder: Encoder | None = None, batch_size: int = 32,
                 workers: int | None = None, progress: bool | None = None, backend: str | None = "torch",
                 precision: str | None = "fp32", commit_every: int = 256, device: str | None = None) -> IndexReport:
    """Bring the index at ``path`` up to date with its image folder.

    ``encoder`` defaults to the model named in the index header (on ``backend`` at
    ``precision`` on ``device``; None: ``open_encoder``'s choice); a different model is
    refused (``IndexMismatchError``, naming both). Raises ``SearchIndexError`` when the
    index is missing, damaged, or being written by another process. ``commit_every`` as
    for ``build_index``.
    """
    store = IndexStore.open(path, writable=True)
    try:
        if encoder is None:
            from vqclip.encoder import open_encoder

            encoder = open_encoder(store.header.model_name, backend=backend, precision=precision, device=device,
                                   config=store.header.model_config, digest=store.header.model_digest)
        store.check_model(encoder.identity.digest, encoder.identity.name, encoder.config)
        if not Path(store.header.root).is_dir():
            raise SearchIndexError(f"the image folder {store.header.root!r} of index {str(path)!r} is gone; "
                                   "restore it or build a new index")
        return _sync(store, encoder, batch_size, workers, progress, commit_every)
    finally:
        store.close()


def _sync(store: IndexStore, encoder: Encoder, batch_size: int, workers: int | None,
          progress: bool | None, commit_every: int) -> IndexReport:
    """Make ``store`` match its folder; the common body of build and update."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    report = IndexReport()
    root = Path(store.header.root)
    known = store.entries()
    skipped_before = store.skipped()
    seen: set[str] = set()
    todo: list[tuple[str, Path, int, int]] = []  # (rel, abs, size, mtime_ns) to encode
    touched: list[tuple[str, int, int]] = []
    for rel, p, _ in walk_images(root, exclude=store.path):
        if p is None:  # not an image by its extension
            report.not_images += 1
            continue
        try:
            st = os.stat(p)
        except OSError as e:  # a dangling symlink, a file removed mid-walk
            report.failed.append((rel, f"{p}: cannot stat the file ({e.strerror}); a dangling symlink?"))
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a device never end
            report.failed.append((rel, f"{p}: not a regular file (mode {stat.filemode(st.st_mode)}); skipped"))
            continue
        seen.add(rel)
        e = known.get(rel)
        if e is not None and e.size == st.st_size and e.mtime_ns == st.st_mtime_ns:
            report.unchanged += 1
            continue
        s = skipped_before.get(rel)
        if s is not None and s[0] == st.st_size and s[1] == st.st_mtime_ns:
            report.still_failing += 1
            continue
        if e is not None and e.size == st.st_size and _sha256(p) == e.sha256:
            touched.append((rel, st.st_size, st.st_mtime_ns))  # same bytes, new mtime (a copy, a touch)
            continue
        todo.append((rel, p, st.st_size, st.st_mtime_ns))

    gone = [rel for rel in known if rel not in seen]
    free = store.free_rows()  # holes left by an interrupted run
    if gone:
        free = sorted(free + store.remove(gone))
        report.removed = len(gone)
    gone_skipped = [rel for rel in skipped_before if rel not in seen]
    if gone_skipped:
        store.remove(gone_skipped)
    if touched:
        store.touch(touched)
        report.touched = len(touched)
        report.unchanged += len(touched)
    if report.not_images:  # counted in the report: its reader says so, this is the detail for -v
        log.info("skipped %d files that are not images (by extension: %s)", report.not_images,
                 " ".join(sorted(IMAGE_EXTENSIONS)))

    timings = report.timings
    bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=(not progress) if progress is not None else None,
               leave=False, dynamic_ncols=True)

    def load(item: tuple[str, Path, int, int]) -> Loaded:
        return read_and_decode(str(item[1]))

    pending: list[tuple[list, np.ndarray]] = []  # encoded, not yet committed
    last_commit = time.perf_counter()

    def commit() -> None:
        nonlocal last_commit
        t = time.perf_counter()
        if pending:
            store.add([e for ents, _ in pending for e in ents], np.concatenate([emb for _, emb in pending]), free)
            pending.clear()
        last_commit = time.perf_counter()
        timings.commit_s += last_commit - t

    try:
        for items, loaded, px, bad in decode_batches(todo, load, encoder.preprocess, batch_size, workers, timings):
            if bad:
                stale = [it[0] for it, _ in bad if it[0] in known]  # changed, now unreadable: drop the old entry
                if stale:
                    free.extend(store.remove(stale))
                    free.sort()
                    report.removed += len(stale)
                store.mark_skipped([(it[0], it[2], it[3], reason) for it, reason in bad])
                report.failed.extend((it[0], reason) for it, reason in bad)
                for it, reason in bad:
                    log.info("skipped %s: %s", it[0], reason)
            if px is not None:
                te = time.perf_counter()
                emb = encoder.encode_image(px)  # (b, E) unit rows
                timings.encode_s += time.perf_counter() - te
                for it in items:
                    if it[0] in known:
                        report.updated += 1
                    else:
                        report.added += 1
                pending.append(([(it[0], it[2], it[3], ld.sha256) for it, ld in zip(items, loaded)], emb))
                # Commit every `commit_every` images or every 2 s: each commit costs fsyncs, and
                # a kill loses at most the uncommitted part (re-encoded by the next update).
                if (sum(len(e) for e, _ in pending) >= commit_every
                        or time.perf_counter() - last_commit >= _COMMIT_SECONDS):
                    commit()
            bar.update(len(items) + len(bad))
        commit()
    except KeyboardInterrupt:
        commit()  # Ctrl-C keeps the work already encoded
        raise
    finally:
        bar.close()
    t = time.perf_counter()
    store.compact()
    timings.commit_s += time.perf_counter() - t
    timings.wall_s = time.perf_counter() - t0
    report.total = store.n_entries
    log.info("index %s: %s", store.path, report.summary())
    return report


def _sha256(p: Path) -> str | None:
    """sha256 of the file's bytes; None when it cannot be read (the decode step reports why)."""
    try:
        return sha256_file(p)
    except OSError:
        return None
