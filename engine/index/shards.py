"""Parquet embedding shards: what a distributed embedding job writes (``vqclip.index.ray_embed``)
and ``vqclip index import`` turns into an index.

A shard is one Parquet file with a row per image, columns ``path`` (relative to the root,
'/'-separated), ``size``, ``mtime_ns``, ``sha256`` and ``embedding`` (fixed-size list of
float32, unit rows), so Spark, DuckDB, pandas or a vector database read it as it is. Its
key-value metadata ``vqclip`` (JSON) names the model that encoded it, the image root, the
shard's number, a digest of the file listing it covers and the images that failed to decode::

    out/vqclip-shards.json       the job: model, root, shard size, shard count
    out/shard-00000.parquet      files [0, S) of the sorted listing
    out/shard-00001.parquet      files [S, 2S) ...

A shard is written to a temporary name and renamed, so one that exists is complete; a rerun
skips every shard whose listing and model match (``shard_is_current``).

Example::

    report = import_shards(["out/"], "photos.vqindex", storage="fp16")
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from vqclip._files import atomic_write_bytes, fsync_dir
from vqclip.errors import BackendUnavailableError, IndexMismatchError, SearchIndexError

__all__ = ["JOB_FILE", "ShardMeta", "shard_name", "listing_digest", "write_shard", "read_shard_meta",
           "iter_shard_rows", "find_shards", "shard_is_current", "write_job", "read_job", "import_shards"]

FORMAT = "vqclip-shard"
VERSION = 1
META_KEY = b"vqclip"
JOB_FILE = "vqclip-shards.json"
_IMPORT_BATCH = 4096  # rows per index commit while importing


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise BackendUnavailableError("Parquet shards need pyarrow; install it with "
                                      "`pip install 'vqclip[ray]'` (or `pip install pyarrow`)") from e
    return pa, pq


@dataclass
class ShardMeta:
    """What a shard's metadata says: the model that encoded it and what it covers."""

    path: Path
    model_name: str
    model_digest: str
    model_config: str | None
    embed_dim: int
    root: str
    shard: int
    listing: str  # listing_digest of the files the shard covers
    listed: int  # files listed for this shard (rows + failed)
    failed: list[tuple[str, int, int, str]] = field(default_factory=list)  # (path, size, mtime_ns, reason)

    def model(self) -> str:
        return f"{self.model_name} (weights sha256 {self.model_digest[:12]})"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def listing_digest(root: str, items: Iterable[tuple[str, int, int]]) -> str:
    """sha256 over the folder and the (relative path, size, mtime_ns) of the files a shard covers,
    in order: a rerun recomputes a shard only when its files changed."""
    h = hashlib.sha256(f"{root}\n".encode("utf-8", "surrogateescape"))
    for rel, size, mtime in items:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def write_shard(path: str | Path, meta: dict, rel: list[str], size: list[int], mtime_ns: list[int],
                sha256: list[str], embeddings: np.ndarray) -> None:
    """Write one shard atomically (temporary file, fsync, rename). ``meta`` carries model,
    embed_dim, root, shard, listing, listed and failed, as ``ShardMeta`` reads them back."""
    pa, pq = _pa()
    path = Path(path)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(rel), -1)
    E = int(meta["embed_dim"])
    if emb.shape[1] != E:
        raise SearchIndexError(f"embeddings of width {emb.shape[1]} for a shard of embed_dim {E}")
    md = {META_KEY: json.dumps({"format": FORMAT, "version": VERSION, **meta}).encode("utf-8")}
    table = pa.table({
        "path": pa.array(rel, pa.string()),
        "size": pa.array(size, pa.int64()),
        "mtime_ns": pa.array(mtime_ns, pa.int64()),
        "sha256": pa.array(sha256, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), E),
    }).replace_schema_metadata(md)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def read_shard_meta(path: str | Path) -> ShardMeta:
    """The metadata of the shard at ``path`` (no rows read); ``SearchIndexError`` naming the
    file when it is not Parquet, not a vqclip shard, or its metadata is damaged."""
    pa, pq = _pa()
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise SearchIndexError(f"{path} is not a readable Parquet file ({e}); give the shards written by "
                               "`vqclip index build --ray`") from e
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise SearchIndexError(f"{path} is a Parquet file but not a vqclip shard (no 'vqclip' metadata); give the "
                               "shards written by `vqclip index build --ray`")
    try:
        d = json.loads(raw)
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
        m = d["model"]
        meta = ShardMeta(path, str(m["name"]), str(m["digest"]), m.get("config"), int(d["embed_dim"]), str(d["root"]),
                         int(d["shard"]), str(d["listing"]), int(d["listed"]),
                         [(str(a), int(b), int(c), str(r)) for a, b, c, r in d.get("failed", [])])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SearchIndexError(f"{path} has damaged vqclip metadata ({e}); write the shard again") from e
    for name, want in (("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())):
        if schema.get_field_index(name) < 0 or schema.field(name).type != want:
            raise SearchIndexError(f"{path}: column {name!r} is missing or not {want}; not a vqclip shard")
    i = schema.get_field_index("embedding")
    t = schema.field(i).type if i >= 0 else None
    listy = t is not None and (pa.types.is_fixed_size_list(t) or pa.types.is_list(t))
    if not listy or not pa.types.is_floating(t.value_type):
        raise SearchIndexError(f"{path}: column 'embedding' is missing or not a list of floats; not a vqclip shard")
    if pa.types.is_fixed_size_list(t) and t.list_size != meta.embed_dim:
        raise SearchIndexError(f"{path}: embeddings of size {t.list_size}, its metadata says {meta.embed_dim}")
    return meta


def iter_shard_rows(meta: ShardMeta, batch_rows: int = _IMPORT_BATCH) -> Iterator[tuple[list, np.ndarray]]:
    """The shard's rows in batches: ([(path, size, mtime_ns, sha256)], float32 (n, E) embeddings);
    ``SearchIndexError`` for a row an index would refuse (path outside the root, bad numbers)."""
    pa, pq = _pa()
    E = meta.embed_dim
    seen: set[str] = set()
    try:
        f = pq.ParquetFile(meta.path)
        for b in f.iter_batches(batch_size=batch_rows, columns=["path", "size", "mtime_ns", "sha256", "embedding"]):
            col = b.column("embedding")
            if col.null_count or (pa.types.is_list(col.type) and
                                  not (np.asarray(col.value_lengths()) == E).all()):
                raise SearchIndexError(f"{meta.path}: an embedding is missing or not of size {E}")
            emb = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, E)
            if not np.isfinite(emb).all():
                raise SearchIndexError(f"{meta.path}: embeddings hold values that are not numbers; write it again")
            cols = [b.column(n).to_pylist() for n in ("path", "size", "mtime_ns", "sha256")]
            for rel in cols[0]:
                p = PurePosixPath(rel) if isinstance(rel, str) else None
                if p is None or not rel or p.is_absolute() or ".." in p.parts:
                    raise SearchIndexError(f"{meta.path}: entry path {rel!r} is outside the image root")
                if rel in seen:
                    raise SearchIndexError(f"{meta.path}: the path {rel!r} has two rows; write the shard again")
                seen.add(rel)
            yield list(zip(*cols)), emb
    except (OSError, pa.ArrowException) as e:
        raise SearchIndexError(f"{meta.path}: cannot read its rows ({e}); write the shard again") from e


def find_shards(sources: Iterable[str | Path]) -> list[Path]:
    """Shard files of ``sources``: a file itself; a folder written by ``embed_with_ray`` its job's
    shards, all of them (a job that has not finished is refused); another folder its ``*.parquet``."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        job = read_job(p) if p.is_dir() else None
        if job is not None:
            want = [p / shard_name(i) for i in range(int(job.get("shards", 0)))]
            missing = [q.name for q in want if not q.is_file()]
            if not job.get("complete") or missing:
                raise SearchIndexError(f"{p} is from a job that has not finished ({len(want) - len(missing)} of "
                                       f"{len(want)} shards written); rerun `vqclip index build DIR --out {p} --ray` "
                                       "to complete it")
            out.extend(want)
        elif p.is_dir():
            found = sorted(q for q in p.glob("*.parquet") if q.is_file())
            if not found:
                raise SearchIndexError(f"{p} holds no .parquet shards; give the --out folder of "
                                       "`vqclip index build --ray` or shard files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise SearchIndexError(f"{p} does not exist; give shard files or the folder that holds them")
    return out


def shard_is_current(path: Path, digest: str, listing: str) -> bool:
    """Whether the shard at ``path`` exists, reads, and covers ``listing`` with model ``digest``."""
    if not path.is_file():
        return False
    try:
        m = read_shard_meta(path)
    except SearchIndexError:
        return False
    return m.model_digest == digest and m.listing == listing


def write_job(out: Path, job: dict) -> None:
    atomic_write_bytes(out / JOB_FILE, (json.dumps({"format": "vqclip-shards", "version": VERSION, **job},
                                                   indent=2) + "\n").encode("utf-8"))


def read_job(out: Path) -> dict | None:
    """The job file of a shard folder, None when there is none; damaged -> ``SearchIndexError``."""
    p = out / JOB_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        if d.get("format") != "vqclip-shards":
            raise ValueError(f"format {d.get('format')!r}")
        d["model"]["digest"]  # noqa: B018 - must be there
        return d
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SearchIndexError(f"{p} is damaged ({e}); delete the folder and run the job again") from e


def check_same_model(metas: list[ShardMeta]) -> ShardMeta:
    """The first shard, once every other one is shown to have the same model, size and root."""
    first = metas[0]
    for m in metas[1:]:
        if m.model_digest != first.model_digest:
            raise IndexMismatchError(f"shards of two models: {first.path.name} was encoded with {first.model()}, "
                                     f"{m.path.name} with {m.model()}; import each model's shards into its own index")
        if m.embed_dim != first.embed_dim:
            raise IndexMismatchError(f"shards with embeddings of two sizes: {first.path.name} has "
                                     f"{first.embed_dim}, {m.path.name} has {m.embed_dim}")
        if m.root != first.root:
            raise SearchIndexError(f"shards of two image folders: {first.path.name} covers {first.root}, "
                                   f"{m.path.name} covers {m.root}; an index has one folder, import them apart")
    return first


def import_shards(sources: Iterable[str | Path], out: str | Path, storage: str = "fp16", force: bool = False):
    """Make a vqclip index at ``out`` from shards (files, or folders of them): the rows, and the
    images that failed as its skipped files. Every shard is checked before anything is written:
    other models, other embedding sizes, other folders or files that are not shards are refused.
    ``out`` must not hold an index unless ``force`` (built beside, then swapped in)."""
    from vqclip.index.build import IndexReport
    from vqclip.index.store import IndexStore, build_beside

    metas = [read_shard_meta(p) for p in find_shards(sources)]
    first = check_same_model(metas)
    out = Path(out)

    def make(dest: Path) -> IndexReport:
        report = IndexReport()
        store = IndexStore.create(dest, model_name=first.model_name, model_digest=first.model_digest,
                                  embed_dim=first.embed_dim, storage=storage, root=first.root,
                                  model_config=first.model_config)
        try:
            failed = [f for m in metas for f in m.failed]
            if failed:  # first: a path that has a row in some shard too leaves the list when its row is added
                store.mark_skipped(failed)
            free: list[int] = []  # rows of entries replaced by a later shard's row for the same path
            rows = 0
            for m in metas:
                for entries, emb in iter_shard_rows(m):
                    store.add(entries, emb, free)
                    rows += len(entries)
            store.compact()
            report.total = report.added = store.n_entries
            report.updated = rows - report.total
            report.failed = [(rel, reason) for rel, (_, _, reason) in store.skipped().items()]
        finally:
            store.close()
        return report

    if (out / "header.json").is_file() and not force:
        raise SearchIndexError(f"{out} already holds an index; import with --force to replace it (the old one is "
                               "kept until the new one is complete)")
    if out.exists() and not (out / "header.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise SearchIndexError(f"{out} exists and is not an index; give a new folder for the index")
    return build_beside(out, make)  # a failed import leaves nothing behind
