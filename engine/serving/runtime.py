"""What a server has loaded: encoders with one batcher per tower, indexes with a search
batcher each, and the label embeddings of recent classifications.

One ``ModelSlot`` per distinct model (weights digest): the served ``--model`` and the model
of any index built by another. Each slot has an image and a text ``Batcher``; each index a
search ``Batcher`` whose one kernel call answers every query in the batch. All of them
report to one ``WorkGate``, so later background work (generation) yields to them.

Example::

    rt = Runtime.load(config, metrics)    # opens the model and the indexes
    rt.warm_up()                          # one call through each, before /readyz says ready
    rows = await rt.main.text.submit(ids, len(ids), deadline)
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqclip.encoder import Encoder
from vqclip.errors import IndexMismatchError
from vqclip.index.reader import Hit, Searchable, is_milvus_target, open_index
from vqclip.jobs.classify import ZeroShotClassifier
from vqclip.serving.batcher import Batcher, WorkGate, run_concatenated
from vqclip.serving.config import ServerConfig
from vqclip.serving.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["ModelSlot", "LoadedIndex", "Runtime"]


@dataclass
class ModelSlot:
    """One model on one backend and its two queues."""

    key: str  # short, stable name for metrics and logs: "<model>@<backend>"
    encoder: Encoder
    dim: int  # embedding size
    image: Batcher  # float32 (n, 3, S, S) pixels -> (n, E) rows
    text: Batcher  # int64 (n, T) token ids -> (n, E) rows

    def close(self) -> None:
        self.image.close()
        self.text.close()


@dataclass
class LoadedIndex:
    """An open index, the slot of the model that built it, and its search queue."""

    name: str
    index: Searchable  # an Index, or a MilvusIndex
    slot: ModelSlot
    search: Batcher  # ((1, E) query, k) -> list[Hit]

    @property
    def root(self) -> Path:
        return Path(self.index.store.header.root)


def _search_run(index: Searchable):
    """A batch function answering several (query rows, k) with one kernel call at the largest k."""

    def run(payloads: list[tuple[np.ndarray, int]]) -> list[list[list[Hit]]]:
        q = np.concatenate([p[0] for p in payloads], axis=0)
        hits = index.search_embeddings(q, max(k for _, k in payloads))
        out, i = [], 0
        for rows, k in payloads:  # top-k of a smaller k is the prefix of the larger one's
            out.append([h[:k] for h in hits[i:i + len(rows)]])
            i += len(rows)
        return out

    return run


class Runtime:
    """The loaded models, indexes and queues of one server; ``close`` stops the workers."""

    def __init__(self, config: ServerConfig, encoder: Encoder, indexes: dict[str, Searchable],
                 metrics: Metrics, gate: WorkGate | None = None):
        self.config = config
        self.metrics = metrics
        self.gate = gate if gate is not None else WorkGate()
        self._slots: dict[str, ModelSlot] = {}
        self.main = self._slot(encoder)
        self.indexes: dict[str, LoadedIndex] = {}
        for name, idx in indexes.items():
            slot = self._slot(idx.encoder)
            search = self._batcher(f"search:{name}", _search_run(idx))
            self.indexes[name] = LoadedIndex(name, idx, slot, search)
        self._labels: OrderedDict[tuple, ZeroShotClassifier] = OrderedDict()
        self._labels_lock = threading.Lock()
        self._compute_lock = threading.Lock()

    @classmethod
    def load(cls, config: ServerConfig, metrics: Metrics, encoder: Encoder | None = None) -> "Runtime":
        """Open ``config.model`` (unless ``encoder`` is given) and every index of ``config.indexes``.

        An index built by another model gets that model, on the same backend and precision,
        in a slot of its own. Raises what ``open_encoder`` / ``Index.open`` raise.
        """
        from vqclip.encoder import open_encoder

        if encoder is None:
            encoder = open_encoder(config.model, backend=config.backend, precision=config.precision,
                                   device=config.device, config=config.arch)
        indexes: dict[str, Searchable] = {}
        try:
            for name, path in config.indexes.items():
                target = path if is_milvus_target(path) else Path(path).expanduser()
                try:
                    indexes[name] = open_index(target, encoder=encoder)
                except IndexMismatchError:
                    idx = open_index(target, backend=config.backend, precision=config.precision,
                                     device=config.device)
                    indexes[name] = idx
                    log.info("index %s was built by %s; opening that model too", name, idx.store.header.model_name)
                    idx.encoder  # noqa: B018 - open its model now, not on the first query
        except BaseException:
            for idx in indexes.values():
                idx.close()
            raise
        return cls(config, encoder, indexes, metrics)

    def _batcher(self, name: str, run) -> Batcher:
        b = Batcher(name, run, max_batch=self.config.max_batch, max_wait_s=self.config.max_wait_ms / 1000,
                    max_queue=self.config.max_queue, gate=self.gate, **self.metrics.batcher_hooks(name))
        self.metrics.watch_depth(name, lambda: b.queued)
        return b

    def _slot(self, encoder: Encoder) -> ModelSlot:
        digest = encoder.identity.digest
        if digest not in self._slots:
            key = f"{Path(encoder.identity.name).name}@{encoder.backend}"
            mb = self.config.max_batch
            dim = encoder.encode_texts(["a"]).shape[1]  # the embedding size, whatever the backend
            self._slots[digest] = ModelSlot(
                key, encoder, dim,
                image=self._batcher(f"image:{key}", run_concatenated(encoder.encode_image, mb)),
                text=self._batcher(f"text:{key}", run_concatenated(encoder.encode_text, mb)))
        return self._slots[digest]

    def warm_up(self) -> None:
        """One call through each encoder and index, so the first request pays no lazy set-up
        (sessions, memory arenas, the index pages read from disk)."""
        for slot in self._slots.values():
            enc = slot.encoder
            enc.encode_texts(["warm up"])
            enc.encode_image(np.zeros((1, 3, enc.image_size, enc.image_size), np.float32))
        for li in self.indexes.values():
            if len(li.index):
                li.index.search_embeddings(np.ones((1, li.index.store.header.embed_dim), np.float32), 1)

    def classifier(self, labels: list[str], templates: list[str]) -> ZeroShotClassifier:
        """The main model's classifier for these labels, from memory or made now (blocking:
        call it off the event loop). Client label sets never touch the disk cache."""
        key = (tuple(labels), tuple(templates))
        with self._labels_lock:
            clf = self._labels.get(key)
            if clf is not None:
                self._labels.move_to_end(key)
                return clf
        with self._compute_lock:  # one label set encoded at a time: a second asker waits, then finds it
            with self._labels_lock:
                clf = self._labels.get(key)
            if clf is None:
                with self.gate.hold():
                    clf = ZeroShotClassifier(self.main.encoder, labels, templates, use_cache=False)
                with self._labels_lock:
                    self._labels[key] = clf
                    while len(self._labels) > self.config.label_cache:
                        self._labels.popitem(last=False)
        return clf

    def index(self, name: str | None) -> LoadedIndex:
        """The loaded index ``name`` (None: the only one); ``KeyError`` with a message otherwise."""
        if not self.indexes:
            raise KeyError("no index is loaded; start the server with --index NAME=PATH")
        if name is None:
            if len(self.indexes) == 1:
                return next(iter(self.indexes.values()))
            raise KeyError("give an index name; loaded: " + ", ".join(sorted(self.indexes)))
        if name not in self.indexes:
            raise KeyError(f"no index {name!r} is loaded; loaded: " + (", ".join(sorted(self.indexes)) or "none"))
        return self.indexes[name]

    def close(self) -> None:
        """Finish queued work, stop the workers, close the indexes."""
        for li in self.indexes.values():
            li.search.close()
        for slot in self._slots.values():
            slot.close()
        for li in self.indexes.values():
            li.index.close()
