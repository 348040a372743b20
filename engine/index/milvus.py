"""Serving an index's search from Milvus: the same rows, model and queries as a vqclip index,
answered by a vector database (pymilvus; Milvus Lite for a local file, a Milvus server by address).

``export_milvus`` copies an index into a collection whose properties record the model identity
(a collection is refused for another model, naming both, as an index is). The rows go in as the
index stores them, divided by their stored norms, so inner product is the cosine the fused
kernels compute; exact (FLAT) search therefore returns the index's own hits. HNSW and IVF_FLAT
trade recall for speed. The export fills a new collection and then points the name (a Milvus
alias) at it: an export that fails or is killed leaves the previous one serving.

A target names the database and the collection::

    milvus://HOST:PORT/COLLECTION          a Milvus server over http (MILVUS_TOKEN for auth)
    milvus+https://HOST:PORT/COLLECTION    the same over https
    milvus:///abs/path/photos.db/COLLECTION a Milvus Lite file (milvus://rel.db/... relative)

Example::

    export_milvus("photos.vqindex", "photos.db", "photos", index_type="HNSW")
    idx = MilvusIndex.open("milvus://photos.db/photos", backend="onnxruntime", precision="int8")
    idx.search(text="a red circle", k=5)
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqclip.encoder import Encoder
from vqclip.errors import (
    BackendUnavailableError,
    InvalidInputError,
    OutputExistsError,
    SearchIndexError,
    ServiceUnreachableError,
)
from vqclip.index.reader import Hit, Searchable, given_encoder
from vqclip.index.store import Header, check_model

log = logging.getLogger(__name__)

__all__ = ["INDEX_TYPES", "MilvusIndex", "export_milvus", "parse_target"]

INDEX_TYPES = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}}
_SEARCH_DEFAULTS = {"HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16}}  # raised to k where Milvus needs it
_MAX_K = 16384  # Milvus's limit on top-k
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_PREFIX = "vqclip."


def parse_target(target: str) -> tuple[str, str]:
    """``milvus://...`` -> (pymilvus URI, collection): a ``.db`` location is a Milvus Lite file."""
    scheme = "https" if target.startswith("milvus+https://") else "http"
    if not target.startswith(("milvus://", "milvus+https://")):
        raise InvalidInputError(f"{target!r} is not a milvus:// target; give milvus://HOST:PORT/COLLECTION or "
                                "milvus:///path/to/file.db/COLLECTION")
    where, _, collection = target.split("://", 1)[1].rpartition("/")
    if not where or not _NAME.fullmatch(collection):
        raise InvalidInputError(f"{target!r} does not end in /COLLECTION (letters, digits, '_'); give "
                                "milvus://HOST:PORT/COLLECTION or milvus:///path/to/file.db/COLLECTION")
    if where.endswith(".db") and scheme == "http":
        return where, collection
    return f"{scheme}://{where}", collection


def _target(uri: str, collection: str) -> str:
    if uri.startswith("https://"):
        return f"milvus+https://{uri[len('https://'):]}/{collection}"
    return f"milvus://{uri.split('://', 1)[1] if '://' in uri else uri}/{collection}"


def _pymilvus():
    try:
        import pymilvus
        from pymilvus.exceptions import MilvusException
    except ImportError as e:
        raise BackendUnavailableError("Milvus needs pymilvus; install it with `pip install 'vqclip[milvus]'`") from e
    return pymilvus, MilvusException


def connect(uri: str, must_exist: bool = False):
    """A ``MilvusClient`` for ``uri`` (a Lite ``.db`` file, or http(s)://HOST:PORT); one line
    naming the URI when pymilvus is missing or the database does not answer. ``must_exist``:
    refuse a Lite file that is not there (searching one would make it, empty)."""
    pymilvus, MilvusException = _pymilvus()
    MilvusClient = pymilvus.MilvusClient
    if not uri.startswith(("http://", "https://")):
        if not uri.endswith(".db"):
            raise InvalidInputError(f"Milvus URI {uri!r} is neither a Milvus Lite file (*.db) nor http(s)://HOST:PORT")
        parent = Path(uri).expanduser().resolve().parent
        if not parent.is_dir():
            raise ServiceUnreachableError(f"cannot open Milvus Lite file {uri!r}: its folder {parent} does not exist")
        if must_exist and not Path(uri).expanduser().exists():
            raise SearchIndexError(f"no Milvus Lite file at {uri!r}; make it with `vqclip index export-milvus INDEX "
                                   f"--uri {uri} --collection NAME`")
        uri = str(Path(uri).expanduser().resolve())
        # Milvus Lite serves pymilvus in this process, and its gRPC server logs a traceback for
        # each call Lite does not implement (pymilvus asks for a timestamp on flush, then copes).
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=10)
    except (MilvusException, OSError, RuntimeError) as e:
        busy = " (a Milvus Lite file is open in one process at a time: is a server using it?)" \
            if not uri.startswith(("http://", "https://")) else ""
        raise ServiceUnreachableError(f"cannot reach Milvus at {uri!r} ({_first_line(e)}){busy}; start it or check "
                                      "the URI") from e


@contextmanager
def _milvus_errors(what: str):
    """A pymilvus error during ``what`` as one typed line (the server said no, or went away)."""
    _, MilvusException = _pymilvus()
    try:
        yield
    except MilvusException as e:
        raise SearchIndexError(f"Milvus refused {what}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__


@dataclass
class ExportReport:
    target: str  # what `vqclip search` / `vqclip serve --index` take
    rows: int
    index_type: str
    seconds: float
    insert_s: float = 0.0  # of ``seconds``: rows inserted and flushed, before the vector index is built

    def summary(self) -> str:
        return f"{self.rows} rows in {self.target} ({self.index_type} index) in {self.seconds:.1f} s"


def export_milvus(index: str | Path, uri: str, collection: str, index_type: str = "FLAT",
                  params: dict | None = None, force: bool = False, batch_rows: int = 2000) -> ExportReport:
    """Copy the index at ``index`` into ``collection`` at ``uri`` and build a Milvus index on it:
    ``index_type`` FLAT (exact), HNSW or IVF_FLAT with ``params`` over ``INDEX_TYPES``' defaults.
    A collection of that name is replaced only with ``force`` (``OutputExistsError`` otherwise),
    and only once the new one is loaded."""
    from vqclip.index.store import IndexStore, decode_rows

    pymilvus, _ = _pymilvus()
    DataType, MilvusClient = pymilvus.DataType, pymilvus.MilvusClient
    index_type = str(index_type).upper()
    if index_type not in INDEX_TYPES:
        raise InvalidInputError(f"index type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    if not _NAME.fullmatch(collection):
        raise InvalidInputError(f"collection name {collection!r}: use letters, digits and '_', starting with a letter")
    t0 = time.perf_counter()
    with IndexStore.open(index) as store:
        client = connect(uri)
        try:
            with _milvus_errors(f"the export into {collection!r}"):
                existing = _resolve(client, collection)
                if existing is not None and not force:
                    raise OutputExistsError(f"collection {collection!r} exists at {uri}; export with --force to "
                                            "replace it (the old one serves until the new one is loaded)")
                if existing is not None and not _is_ours(client, existing):
                    raise OutputExistsError(f"collection {collection!r} at {uri} was not made by vqclip; export "
                                            "under another name (--force replaces only vqclip's collections)")
                _drop_orphans(client, collection, existing)
                h = store.header
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)  # the row in the index
                schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=h.embed_dim)
                schema.add_field("path", DataType.VARCHAR, max_length=4096)
                schema.add_field("size", DataType.INT64)
                schema.add_field("mtime_ns", DataType.INT64)
                schema.add_field("sha256", DataType.VARCHAR, max_length=64)
                db = store._reader()
                n_rows, max_row = db.execute("SELECT COUNT(*), MAX(row) FROM entries").fetchone()
                props = {f"{_PREFIX}format": "vqclip-milvus", f"{_PREFIX}version": "1",
                         f"{_PREFIX}model_name": h.model_name, f"{_PREFIX}model_digest": h.model_digest,
                         f"{_PREFIX}model_config": h.model_config or "", f"{_PREFIX}embed_dim": str(h.embed_dim),
                         f"{_PREFIX}storage": h.storage, f"{_PREFIX}root": h.root,
                         f"{_PREFIX}index_type": index_type, f"{_PREFIX}rows": str(max_row + 1 if n_rows else 0)}
                physical = f"{collection}_v{time.time_ns()}"
                client.create_collection(physical, schema=schema, properties=props)
                try:
                    cursor = db.execute("SELECT row, path, size, mtime_ns, sha256 FROM entries ORDER BY row")
                    while chunk := cursor.fetchmany(batch_rows):  # streamed: an index's entries need not fit
                        r = np.array([c[0] for c in chunk], dtype=np.int64)
                        x = decode_rows(store.vectors[r], store.scales[r] if store.scales is not None else None)
                        x /= np.maximum(store.norms[r], 1e-30)[:, None]  # the kernels' cosine: row over its norm
                        client.insert(physical, [{"id": int(c[0]), "embedding": v, "path": c[1], "size": c[2],
                                                  "mtime_ns": c[3], "sha256": c[4]} for c, v in zip(chunk, x)])
                    client.flush(physical)
                    insert_s = time.perf_counter() - t0
                    ip = client.prepare_index_params()
                    ip.add_index("embedding", index_type=index_type, metric_type="IP",
                                 params={**INDEX_TYPES[index_type], **(params or {})})
                    create_index(client, physical, ip)
                    client.load_collection(physical)
                    _point(client, collection, physical, existing)
                except BaseException:
                    _drop_quietly(client, physical)  # the old collection, if any, still serves
                    raise
            return ExportReport(_target(uri, collection), n_rows, index_type, time.perf_counter() - t0, insert_s)
        finally:
            client.close()


def create_index(client, collection: str, index_params) -> None:
    """``client.create_index``, surviving pymilvus's retry of a long build: Milvus Lite's gRPC
    server drops a connection that pings during a build of minutes (1M rows of HNSW), pymilvus
    sends the call again, and Milvus answers that the index exists, which it does."""
    _, MilvusException = _pymilvus()
    try:
        client.create_index(collection, index_params)
    except MilvusException as e:
        if "index already exists" not in _first_line(e):
            raise
        log.info("Milvus is building the index of %s on a first call that pymilvus retried", collection)
    while True:  # the retried call answers at once: wait for the first one's build to finish
        d = client.describe_index(collection, "embedding")
        if d.get("state", "Finished") == "Finished" and not d.get("pending_index_rows", 0):
            return
        time.sleep(1.0)


def _resolve(client, name: str) -> str | None:
    """The collection ``name`` stands for: an alias's target, a collection of that name, or None."""
    if name in client.list_aliases().get("aliases", []):
        return client.describe_alias(name)["collection_name"]
    return name if client.has_collection(name) else None


def _is_ours(client, physical: str) -> bool:
    props = client.describe_collection(physical).get("properties", {})
    return props.get(f"{_PREFIX}format") == "vqclip-milvus"


def _drop_orphans(client, name: str, serving: str | None) -> None:
    """Drop the ``{name}_v...`` collections no alias serves: left by an export that was killed."""
    pattern = re.compile(re.escape(name) + r"_v\d+")
    for c in client.list_collections():
        if pattern.fullmatch(c) and c != serving and _is_ours(client, c):
            _drop_quietly(client, c)


def _point(client, name: str, physical: str, existing: str | None) -> None:
    """Make ``name`` serve ``physical`` (one alias change); drop what it served before."""
    if existing is None:
        client.create_alias(physical, name)
    else:
        client.alter_alias(physical, name)
        _drop_quietly(client, existing)


def _drop_quietly(client, name: str) -> None:
    try:
        client.drop_collection(name)
    except Exception as e:  # noqa: BLE001 - a leftover collection is reported, not fatal
        log.warning("could not drop Milvus collection %s: %s", name, e)


class MilvusEntries:
    """The part of ``IndexStore`` that serving reads (header, row count, paths by row), for the
    collection a name served when it was opened (``refresh`` follows the name again)."""

    def __init__(self, client, name: str, target: str):
        self.client, self.name, self.path = client, name, target
        self.refresh()

    def refresh(self) -> None:
        """Read which collection the name serves now, and its properties."""
        with _milvus_errors(f"opening {self.path}"):
            physical = _resolve(self.client, self.name)
            if physical is None:
                raise SearchIndexError(f"{self.path}: no collection {self.name!r}; make it with `vqclip index "
                                       f"export-milvus INDEX --uri URI --collection {self.name}`")
            props = self.client.describe_collection(physical).get("properties", {})
            if props.get(f"{_PREFIX}format") != "vqclip-milvus":
                raise SearchIndexError(f"{self.path}: collection {self.name!r} was not made by `vqclip index "
                                       "export-milvus` (no vqclip properties); export an index into it")
            try:
                self.header = Header(props[f"{_PREFIX}model_name"], props[f"{_PREFIX}model_digest"],
                                     int(props[f"{_PREFIX}embed_dim"]), props[f"{_PREFIX}storage"],
                                     props[f"{_PREFIX}root"], "", props.get(f"{_PREFIX}model_config") or None)
                self.count = int(props[f"{_PREFIX}rows"])  # ids are index rows, below this
            except (KeyError, ValueError) as e:
                raise SearchIndexError(f"{self.path}: its vqclip properties are damaged ({e}); export the index "
                                       "again with --force") from e
            self.n_entries = int(self.client.get_collection_stats(physical).get("row_count", 0))
            self.index_type = props.get(f"{_PREFIX}index_type", "FLAT")
            self.client.load_collection(physical)
            self.collection = physical  # searched by its own name: a later export cannot swap it mid-use

    def check_model(self, digest: str, name: str, config: dict | None = None) -> None:
        check_model(self.path, self.header, digest, name, config)

    def close(self) -> None:
        self.client.close()

    def paths_for_rows(self, rows: list[int]) -> dict[int, str]:
        if not rows:
            return {}
        with _milvus_errors(f"a lookup in {self.path}"):
            got = self.client.get(self.collection, ids=[int(r) for r in rows], output_fields=["path"])
        return {int(g["id"]): g["path"] for g in got}

    def absolute(self, rel: str) -> str:
        return str(Path(self.header.root) / rel)


class MilvusIndex(Searchable):
    """A collection exported by ``export_milvus``, answering queries like ``Index``.

    Use ``MilvusIndex.open``. ``search_params`` go to Milvus as they are (``ef`` for HNSW,
    ``nprobe`` for IVF_FLAT; raised to ``k`` where Milvus needs it). The view is the collection
    the name served at open; ``refresh()`` follows the name to a later export (checking its model).
    """

    def __init__(self, store: MilvusEntries, encoder: Encoder | None, backend: str | None, precision: str | None,
                 device: str | None, search_params: dict | None):
        self.store = store
        self._encoder = encoder
        self._backend = (backend, precision, device)
        self._encoder_lock = threading.Lock()
        self.search_params = {**_SEARCH_DEFAULTS.get(store.index_type, {}), **(search_params or {})}

    @property
    def index_type(self) -> str:
        return self.store.index_type

    @classmethod
    def open(cls, target: str, model: Any = None, backend: str | None = "torch", encoder: Encoder | None = None,
             precision: str | None = "fp32", threads: int | None = None, device: str | None = None,
             search_params: dict | None = None) -> "MilvusIndex":
        """Open the collection of ``target`` (``milvus://...``). The query encoder is as for
        ``Index.open``; a model other than the collection's is refused (``IndexMismatchError``,
        naming both). ``threads`` is accepted for ``Index.open``'s signature (Milvus has its own)."""
        uri, collection = parse_target(target)
        client = connect(uri, must_exist=True)
        try:
            store = MilvusEntries(client, collection, target)
            encoder = given_encoder(store, model, encoder, backend, precision, device)
        except BaseException:
            client.close()
            raise
        return cls(store, encoder, backend, precision, device, search_params)

    def refresh(self) -> None:
        """Follow the name to the collection it serves now; its model must be this index's encoder's."""
        self.store.refresh()
        if self._encoder is not None:
            self.store.check_model(self._encoder.identity.digest, self._encoder.identity.name, self._encoder.config)

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """float32 (B, E) query embeddings -> per query the top-``k`` hits from Milvus, best first;
        scores are cosines (queries are normalised, as the kernels do)."""
        s = self.store
        queries = self._checked_queries(queries, k, "export a non-empty index into it")
        if k > _MAX_K:
            raise InvalidInputError(f"k={k}: Milvus returns at most {_MAX_K} hits per query")
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
        params = dict(self.search_params)
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), k)  # HNSW needs ef >= k
        with _milvus_errors(f"a search of {s.path}"):
            res = s.client.search(s.collection, data=list(queries), limit=k, output_fields=["path"],
                                  search_params={"metric_type": "IP", "params": params})
        return [[Hit(s.absolute(h["entity"]["path"]), float(h["distance"]), int(h["id"])) for h in hits]
                for hits in res]
