"""Text-to-image and image-to-image search over an on-disk index, via the fused kernels.

``Index.open(path)`` maps the index's embedding rows (no copy) into a kernel ``Gallery``
and opens the model that built the index; ``search`` encodes the query and runs the
fused cosine + top-k kernel over every row. One ``Index`` serves many threads at once:
the rows are read-only, each thread gets its own SQLite connection, and the encoder and
kernel calls share no mutable state.

A query's time is the text (or image) encoder and the kernel, one after the other, each
on every core (``vqclip bench search`` times each stage): the fastest CPU
configuration is ``backend="onnxruntime", precision="int8"``. Serving back-to-back
queries, set ``OMP_WAIT_POLICY=PASSIVE`` in the environment: otherwise the kernel's
OpenMP threads spin-wait after each call on the cores the next query's encoder needs.

Example::

    idx = Index.open("photos.vqindex")
    for hit in idx.search(text="a red circle", k=5):
        print(f"{hit.score:.3f} {hit.path}")
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqclip._validate import check_count, check_k
from vqclip.encoder import Encoder
from vqclip.errors import InvalidInputError, SearchIndexError
from vqclip.index.store import KERNEL_DTYPES, IndexStore

log = logging.getLogger(__name__)

__all__ = ["Hit", "Index", "Searchable", "is_milvus_target", "open_index"]


@dataclass(frozen=True)
class Hit:
    path: str  # absolute path of the image
    score: float  # cosine similarity of query and image embeddings, in [-1, 1]
    row: int  # row of the embedding in the index array

    def to_dict(self) -> dict:
        return {"path": self.path, "score": self.score}


class Searchable:
    """What every index answers with: a text or image query encoded by the index's model, then
    ``search_embeddings`` (the fused kernels for ``Index``, the database for ``MilvusIndex``).
    A subclass sets ``store`` (with the model's ``header``), ``_encoder``, ``_encoder_lock`` and
    ``_backend`` = (backend, precision, device) for the header's model."""

    store: Any
    _encoder: Encoder | None
    _encoder_lock: threading.Lock
    _backend: tuple

    @property
    def encoder(self) -> Encoder:
        with self._encoder_lock:
            if self._encoder is None:
                from vqclip.encoder import open_encoder

                h = self.store.header
                enc = open_encoder(h.model_name, backend=self._backend[0], precision=self._backend[1],
                                   device=self._backend[2], config=h.model_config, digest=h.model_digest)
                self.store.check_model(enc.identity.digest, enc.identity.name, enc.config)
                self._encoder = enc
        return self._encoder

    def search(self, text: str | None = None, image: Any = None, k: int = 10, truncate: bool = False) -> list[Hit]:
        """Top-``k`` images for a text or an image query (exactly one), best first.

        ``image`` is a path or a PIL image. ``k`` larger than the index gives every entry;
        ``k < 1``, a blank text, or both/neither query raise ``InvalidInputError``; an
        empty index raises ``SearchIndexError``. Scores are cosine similarities. A text longer
        than the model's context raises ``TextTooLongError`` unless ``truncate``.
        """
        if (text is None) == (image is None):
            raise InvalidInputError("give exactly one query: text=... or image=...")
        check_k(k)
        if text is not None:
            if not str(text).strip():
                raise InvalidInputError("the text query is empty or only whitespace; give some words to search for")
            q = self.encoder.encode_texts([str(text).strip()], truncate=truncate)  # (1, E)
        else:
            q = self.encoder.encode_image(self.encoder.preprocess([_load_query_image(image)]))  # (1, E)
        return self.search_embeddings(q, k)[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        raise NotImplementedError

    def _checked_queries(self, queries: np.ndarray, k: int, empty_hint: str) -> np.ndarray:
        """``queries`` as float32 (B, E) C-order, once ``k``, their shape and a non-empty store check out."""
        check_k(k)
        s = self.store
        if s.n_entries == 0:
            raise SearchIndexError(f"index {str(s.path)!r} holds no images; {empty_hint}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != s.header.embed_dim:
            raise InvalidInputError(f"queries of shape {queries.shape}; expected (B, {s.header.embed_dim})")
        return queries

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.n_entries


class Index(Searchable):
    """A read-only view of an index folder that answers text and image queries.

    Use ``Index.open``. The view is the committed state at open time; ``refresh()``
    picks up a later update.
    """

    def __init__(self, store: IndexStore, encoder: Encoder | None, backend: str | None = "torch",
                 precision: str | None = "fp32", threads: int | None = None, device: str | None = None):
        self.store = store
        self.threads = _kernel_threads(threads)  # OpenMP threads of each kernel call
        self._encoder = encoder
        self._backend = (backend, precision, device)  # for the header's model, opened on first query
        self._encoder_lock = threading.Lock()  # first queries from several threads open one encoder
        self._gallery = None
        self._build_gallery()
        if not Path(store.header.root).is_dir():
            log.warning("the image folder %s of index %s is missing: hits name files that are not there",
                        store.header.root, store.path)

    @classmethod
    def open(cls, path: str | Path, model: Any = None, backend: str | None = "torch",
             encoder: Encoder | None = None, precision: str | None = "fp32",
             threads: int | None = None, device: str | None = None) -> "Index":
        """Open the index at ``path``.

        The query encoder is ``encoder`` if given, else ``model`` on ``backend`` at
        ``precision``, else the model named in the index header (opened on first
        text/image query). ``backend="onnxruntime"`` with ``precision="int8"`` (or
        ``"fp32"``) is the fast CPU configuration: the model is exported to ONNX once
        and cached; ``backend=None`` picks it when the export is cached already, else torch
        (``open_encoder``). The header's model opens from its cached export without reading
        its weights or importing torch. ``threads``: OpenMP threads of each kernel call; None means
        ``OMP_NUM_THREADS`` if set, else every CPU this process may use (the encoder
        has finished by then, so the two never compete for cores).

        A model other than the index's is refused with ``IndexMismatchError`` naming
        both; a missing or damaged index raises ``SearchIndexError``; ``threads < 1``
        raises ``InvalidInputError``.

        Example: ``Index.open("photos.vqindex", backend="onnxruntime", precision="int8")``
        """
        threads = _kernel_threads(threads)  # a bad value fails before any model loads
        store = IndexStore.open(path)
        try:
            encoder = given_encoder(store, model, encoder, backend, precision, device)
        except BaseException:
            store.close()
            raise
        return cls(store, encoder, backend, precision, threads, device)

    def refresh(self) -> None:
        """See the index as committed now (after an update by another process)."""
        self.store.refresh()
        self._build_gallery()

    def _build_gallery(self) -> None:
        from vqclip.kernels import Gallery

        s = self.store
        # Wraps the memory-mapped rows in place: opening a 1M-row index reads no rows.
        self._gallery = Gallery.from_arrays(s.vectors, s.norms, s.scales, dtype=KERNEL_DTYPES[s.header.storage])

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """float32 (B, E) query embeddings -> per query the top-``k`` hits, best first.

        Rows with no entry (holes, only while an update is running) are skipped by asking
        the kernel for ``k + holes`` and dropping them.
        """
        s = self.store
        queries = self._checked_queries(queries, k, f"add some and run `vqclip index update {s.path}`")
        kk = min(s.count, k + max(s.holes, 0))
        scores, ids = self._gallery.search(queries, kk, threads=self.threads)  # (B, kk) each; -1 pads past the rows
        if (ids < 0).any():  # kk <= count rows exist, so a -1 is a row the kernel dropped: not a number
            raise SearchIndexError(f"index {str(s.path)!r} has stored rows that are not numbers (damaged); rebuild "
                                   f"it with `vqclip index build DIR --out {s.path} --force`")
        return self.lookup(scores, ids, k)

    def lookup(self, scores: np.ndarray, ids: np.ndarray, k: int) -> list[list[Hit]]:
        """The kernel's (B, kk) scores and row ids -> per query its first ``k`` hits with
        their paths (one SQLite read per query); rows an update dropped since open are skipped."""
        s = self.store
        out = []
        for srow, irow in zip(scores, ids):
            paths = s.paths_for_rows([int(i) for i in irow])
            hits = [Hit(s.absolute(paths[int(i)]), float(sc), int(i)) for sc, i in zip(srow, irow) if int(i) in paths]
            out.append(hits[:k])
        return out


def given_encoder(store: Any, model: Any, encoder: Encoder | None, backend: str | None, precision: str | None,
                  device: str | None) -> Encoder | None:
    """The query encoder a caller gave (``encoder``, or ``model`` opened on ``backend``), checked
    against the store's model; None leaves the header's model to open on the first query."""
    if encoder is None and model is not None:
        from vqclip.encoder import open_encoder

        encoder = open_encoder(model, backend=backend, precision=precision, device=device)
    if encoder is not None:
        store.check_model(encoder.identity.digest, encoder.identity.name, encoder.config)
    return encoder


def _load_query_image(image: Any):
    if isinstance(image, (str, Path)):
        from vqclip.decode import read_and_decode

        return read_and_decode(str(image)).image
    return image.convert("RGB")


def _kernel_threads(threads: int | None) -> int:
    """``threads`` checked as a user's argument, then resolved as every kernel call resolves
    it (``vqclip.kernels.resolve_threads``: OMP_NUM_THREADS, else every CPU)."""
    from vqclip.kernels import resolve_threads

    return resolve_threads(check_count(threads, "threads", allow_none=True))


def is_milvus_target(text: str | Path) -> bool:
    """Whether ``text`` names a Milvus collection (``vqclip.index.milvus.parse_target``), not a folder."""
    return str(text).startswith(("milvus://", "milvus+https://"))


def open_index(target: str | Path, **kwargs) -> Searchable:
    """``Index.open`` for an index folder, ``MilvusIndex.open`` for a ``milvus://`` target
    (``vqclip.index.milvus``); the same keyword arguments."""
    if is_milvus_target(target):
        from vqclip.index.milvus import MilvusIndex

        return MilvusIndex.open(str(target), **kwargs)
    return Index.open(target, **kwargs)
