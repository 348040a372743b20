"""Embedding an image collection on a Ray cluster with Ray Data: the same encoders as
``vqclip index build``, written as Parquet shards (``vqclip.index.shards``).

The pipeline: the driver lists the folder (sorted) and cuts the listing into shards of
``shard_size`` files; Ray Data reads, decodes and preprocesses in CPU tasks, encodes in an
actor pool (each actor holds one ``Encoder`` on its backend, ``num_gpus`` each where there
are GPUs), and the driver writes each shard as soon as all its files are back. A row is
kept per file path, so a task Ray retries after a worker dies neither loses nor doubles
rows; failed images are counted in their shard and never stop the job; a rerun skips the
shards already written for the same files and model. Every node must see the folder at
the same path (a shared filesystem) and have vqclip installed.

Example::

    report = embed_with_ray("photos/", "photos.shards", model="ViT-B-32", backend="onnxruntime",
                            precision="int8", address="ray://head:10001", actors=8, gpus_per_actor=1)
    import_shards(["photos.shards"], "photos.vqindex")   # then search with the fused kernels
"""
from __future__ import annotations

import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from vqclip.errors import (
    BackendUnavailableError,
    ImageDecodeError,
    IndexMismatchError,
    InvalidInputError,
    SearchIndexError,
    ServiceUnreachableError,
    VqclipError,
)
from vqclip.index.shards import JOB_FILE, listing_digest, read_job, shard_is_current, shard_name, write_job, write_shard
from vqclip.index.store import walk_images

log = logging.getLogger(__name__)

__all__ = ["EncoderSpec", "ShardsReport", "embed_with_ray"]

_CONNECT_TIMEOUT_S = 5.0
_WORKER_BYTES = 192 << 20  # a decode worker before its batch: Python, numpy, PIL


@dataclass(frozen=True)
class EncoderSpec:
    """How each actor opens its encoder (picklable: it travels to the workers)."""

    model: Any = None
    backend: str | None = None
    precision: str | None = None
    device: str | None = None
    config: Any = None
    digest: str | None = None

    def __call__(self):
        from vqclip.encoder import open_encoder

        return open_encoder(self.model, backend=self.backend, precision=self.precision, device=self.device,
                            config=self.config, digest=self.digest)


@dataclass
class ShardsReport:
    """What one run did: shards written now or kept from an earlier run, images encoded now,
    images that failed (relative path, reason), files skipped as not images."""

    shards: int = 0
    written: int = 0
    kept: int = 0
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_images: int = 0
    wall_s: float = 0.0

    def summary(self) -> str:
        rate = f", {self.images / self.wall_s:.1f} images/s" if self.wall_s > 0 and self.images else ""
        return (f"{self.shards} shards: {self.written} written, {self.kept} already done; {self.images} images "
                f"encoded, {len(self.failed)} unreadable, {self.not_images} non-images skipped{rate}")


def embed_with_ray(folder: str | Path, out: str | Path, model: Any = None, *, backend: str | None = None,
                   precision: str | None = None, device: str | None = None, config: Any = None,
                   encoder_factory: Callable[[], Any] | None = None, address: str | None = None, actors: int = 1,
                   cpus_per_actor: float = 1, gpus_per_actor: float = 0, decode_cpus: float = 0.5,
                   batch_size: int = 128, shard_size: int = 1024, progress: bool | None = None) -> ShardsReport:
    """Encode every image under ``folder`` on Ray and write Parquet shards into ``out``.

    ``address``: None or "local" starts Ray on this machine for the job; "auto", "HOST:PORT" or
    "ray://HOST:PORT" joins a running cluster (``ServiceUnreachableError`` naming it when it
    cannot be reached). An already initialised Ray is used as it is. ``encoder_factory``
    (picklable, called once on the driver and once per actor) replaces opening ``model`` on
    ``backend``/``precision``/``device``. Rerunning into ``out`` resumes; ``out`` made for another
    model is refused (``IndexMismatchError``, naming both). Ray schedules by the CPUs each stage
    asks for: ``cpus_per_actor`` per encoder actor and ``decode_cpus`` per decode task (half a
    CPU: reading a file waits on the disk, so two tasks share a core); ``batch_size`` images go
    through each task and each encoder call.
    """
    try:
        import ray
    except ImportError as e:
        raise BackendUnavailableError("--ray needs Ray Data; install it with `pip install 'vqclip[ray]'`") from e
    t0 = time.perf_counter()
    for name, v in (("actors", actors), ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name}={v!r}; give a whole number >= 1")
    if address not in (None, "", "local", "auto"):
        _check_reachable(address)  # before the model loads: a wrong address fails in seconds
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise InvalidInputError(f"{str(folder)!r} is not a folder; give the folder of images to embed")
    # The driver needs the model's identity and preprocessing only: on the CPU, so a GPU job's
    # head node needs no GPU; the actors open the model on the backend and device asked for.
    on_driver = device if device in (None, "cpu") else "cpu"
    factory = encoder_factory or EncoderSpec(model, backend if on_driver == device else None,
                                             precision if on_driver == device else None, on_driver, config)
    enc = factory()
    digest = enc.identity.digest
    embed_dim = enc.embed_dim or enc.encode_texts(["a"]).shape[1]
    root = str(folder.resolve())
    model_meta = {"name": enc.identity.name, "digest": digest, "config": enc.architecture}
    old = _check_out(out, model_meta, root)

    report = ShardsReport()
    listing = _list(folder, out, report)
    if not listing and old:
        raise SearchIndexError(f"{folder} holds no images now, while {out} holds {old} shards of it: is the "
                               "folder mounted? (give a new --out to embed an empty folder)")
    shards = [listing[i:i + shard_size] for i in range(0, len(listing), shard_size)]
    report.shards = len(shards)
    out.mkdir(parents=True, exist_ok=True)
    job = {"model": model_meta, "embed_dim": embed_dim, "root": root, "shard_size": shard_size,
           "shards": len(shards), "files": len(listing)}
    write_job(out, {**job, "complete": False})  # `index import` refuses a folder until the job says complete
    todo = {}
    for i, items in enumerate(shards):
        digest_i = listing_digest(root, ((rel, size, mtime) for rel, _, size, mtime in items))
        if shard_is_current(out / shard_name(i), digest, digest_i):
            report.kept += 1
        else:
            todo[i] = (items, digest_i)
    if todo:
        spec = encoder_factory or EncoderSpec(model, backend, precision, device, config, digest)
        started = _connect(ray, address)
        try:
            _run(ray, todo, out, spec, enc.preprocessor, digest, embed_dim, root, model_meta, actors,
                 cpus_per_actor, gpus_per_actor, decode_cpus, batch_size, progress, report)
        except ray.exceptions.RayError as e:
            raise _unwrap(e) from e
        finally:
            if started:
                ray.shutdown()
    for stale in out.glob("shard-*.parquet"):  # a shorter listing than last time: its tail shards are gone
        n = stale.stem.split("-")[-1]
        if n.isdigit() and int(n) >= len(shards):
            stale.unlink()
    write_job(out, {**job, "complete": True})
    report.wall_s = time.perf_counter() - t0
    log.info("shards %s: %s", out, report.summary())
    return report


def _unwrap(e: BaseException) -> Exception:
    """A Ray error as the user's error inside it (a ``VqclipError`` a worker raised), else one line."""
    cause = getattr(e, "cause", None) or e.__cause__
    if isinstance(cause, VqclipError):
        return cause
    what = cause if isinstance(cause, BaseException) else e
    first = str(what).strip().splitlines()[0] if str(what).strip() else ""
    return SearchIndexError(f"the Ray job failed ({type(what).__name__}: {first}); rerun it to resume from the "
                            "shards written")


def _check_out(out: Path, model: dict, root: str) -> int:
    """``out`` is new, empty, or a shard folder of the same model, architecture and folder: the
    number of shards it holds."""
    if out.exists() and not out.is_dir():
        raise SearchIndexError(f"{out} is a file; give a folder for the shards")
    job = read_job(out) if out.is_dir() else None
    if job is None:
        if out.is_dir() and any(out.iterdir()):
            raise SearchIndexError(f"{out} is not empty and holds no vqclip shards ({JOB_FILE}); give a new folder")
        return 0
    m = job["model"]
    if m["digest"] != model["digest"] or m.get("config") != model["config"]:
        raise IndexMismatchError(f"{out} holds shards of {m.get('name')} (weights sha256 {m['digest'][:12]}, "
                                 f"architecture {m.get('config') or 'as stated'}), not {model['name']} (weights "
                                 f"sha256 {model['digest'][:12]}, architecture {model['config'] or 'as stated'}); "
                                 "give a new --out for this model")
    if job.get("root") != root:
        raise SearchIndexError(f"{out} holds shards of the folder {job.get('root')}, not {root}; give a new --out")
    return len(list(out.glob("shard-*.parquet")))


def _list(folder: Path, out: Path, report: ShardsReport) -> list[tuple[str, str, int, int]]:
    """(relative path, absolute path, size, mtime_ns) of every image file, in walk order; a
    file that cannot be stat-ed is listed with -1s and fails in its shard with the reason."""
    items = []
    for rel, p, _ in walk_images(folder, exclude=out):
        if p is None:
            report.not_images += 1
            continue
        try:
            st = os.stat(p)
            if not stat.S_ISREG(st.st_mode):
                continue  # a FIFO or device would block a reader; build_index skips them the same way
            items.append((rel, str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            items.append((rel, str(p), -1, -1))
    return items


def _connect(ray, address: str | None) -> bool:
    """Initialise Ray for the job; True when this call started it (the job shuts it down)."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "", "local"):
        ray.init(**kwargs)
        return True
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ServiceUnreachableError(f"cannot join the Ray cluster at {address!r} ({first}); start it with "
                                      "`ray start --head` or give its address") from e
    return True


def _check_reachable(address: str) -> None:
    """A TCP connect to the address's host and port, so a wrong one fails in seconds, not Ray's minutes."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise InvalidInputError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT") from e
    if not host or not port:
        raise InvalidInputError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ServiceUnreachableError(f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); start it "
                                      "with `ray start --head` or check the address") from e


def _decode(batch: dict[str, np.ndarray], pre) -> dict[str, np.ndarray]:
    """A CPU task: read, hash, decode and preprocess a batch of files; a file that fails keeps
    its row with the reason in ``error`` and zero pixels."""
    from vqclip.decode import read_and_decode

    n = len(batch["path"])
    px = np.zeros((n, 3, pre.size, pre.size), np.float32)
    sha, err = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
    for i, p in enumerate(batch["path"]):
        try:
            loaded = read_and_decode(str(p))
            px[i] = pre([loaded.image])[0]
            sha[i] = loaded.sha256
        except ImageDecodeError as e:
            err[i] = str(e)
    return {**{k: batch[k] for k in ("shard", "rel", "size", "mtime_ns")}, "sha256": sha, "error": err, "pixels": px}


class _Encode:
    """An actor of the pool: one encoder, opened once, checked to be the driver's model.
    ``_encoder_class`` binds the factory and digest as class attributes, so they travel with
    the class rather than as constructor arguments an actor restart would need to fetch again."""

    factory: Callable[[], Any]
    digest: str

    def __init__(self):
        self.enc = self.factory()
        if self.enc.identity.digest != self.digest:
            raise IndexMismatchError(f"this worker opened {self.enc.identity}, the job encodes with weights sha256 "
                                     f"{self.digest[:12]}; give every node the same model file")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        px = batch.pop("pixels")
        ok = batch["error"] == ""
        emb = None
        if ok.any():
            e = self.enc.encode_image(px[ok])
            emb = np.zeros((len(px), e.shape[1]), np.float32)
            emb[ok] = e
        batch["embedding"] = emb if emb is not None else np.zeros((len(px), 1), np.float32)
        return batch


def _run(ray, todo: dict, out: Path, spec, pre, digest: str, embed_dim: int, root: str, model_meta: dict,
         actors: int, cpus_per_actor: float, gpus_per_actor: float, decode_cpus: float, batch_size: int,
         progress: bool | None,
         report: ShardsReport) -> None:
    """The Ray Data pipeline over the files of the shards in ``todo``; shards written as they complete."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    rows = [{"shard": i, "path": p, "rel": rel, "size": size, "mtime_ns": mtime}
            for i, (items, _) in todo.items() for rel, p, size, mtime in items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    # Ray Data's defaults retry a task whose worker died and restart a dead actor, re-running its batch.
    # The memory request (a batch of pixels, and as much again for decoded images) also keeps Ray
    # from fusing decoding into the encoder actors: decoding runs in its own tasks, beside them.
    ds = ds.map_batches(_decode, fn_kwargs={"pre": pre}, batch_size=batch_size, num_cpus=decode_cpus,
                        memory=_WORKER_BYTES + 2 * batch_size * 3 * pre.size * pre.size * 4)
    encode = type("Encode", (_Encode,), {"factory": staticmethod(spec), "digest": digest})
    ds = ds.map_batches(encode, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
    got: dict[int, dict[str, tuple]] = {i: {} for i in todo}
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j in range(len(b["rel"])):
            i = int(b["shard"][j])
            if i not in got:  # a row of a shard already written, delivered again by a retried task
                continue
            got[i][str(b["rel"][j])] = (str(b["sha256"][j]), str(b["error"][j]), b["embedding"][j])
            if len(got[i]) == len(todo[i][0]):
                _write(out, i, todo[i], got.pop(i), embed_dim, root, model_meta, report)
    if got:  # every row of every shard comes back once the dataset is consumed
        raise SearchIndexError(f"the Ray job returned no rows for shards {sorted(got)[:5]}; run it again to resume")


def _write(out: Path, i: int, shard: tuple, got: dict[str, tuple], embed_dim: int, root: str, model_meta: dict,
           report: ShardsReport) -> None:
    items, digest_i = shard
    rel, size, mtime, sha, emb, failed = [], [], [], [], [], []
    for r, _, s, m in items:  # listing order, one row per file
        h, err, e = got[r]
        if err:
            failed.append((r, s, m, err))
        else:
            rel.append(r)
            size.append(s)
            mtime.append(m)
            sha.append(h)
            emb.append(e)
    meta = {"model": model_meta, "embed_dim": embed_dim, "root": root, "shard": i, "listing": digest_i,
            "listed": len(items), "failed": failed}
    arr = np.stack(emb) if emb else np.zeros((0, embed_dim), np.float32)
    write_shard(out / shard_name(i), meta, rel, size, mtime, sha, arr)
    report.written += 1
    report.images += len(rel)
    report.failed.extend((f[0], f[3]) for f in failed)
