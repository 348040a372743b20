"""Jobs ``search`` and ``index-build``.

``search``: end-to-end text queries through ``Index.search`` on an index of N random unit
rows (fp16 on disk, memory-mapped), per query encoder, with each stage timed on its own
(tokenise, encode, kernel, SQLite lookup); the top-k job's peers (FAISS ``IndexFlatIP``,
torch, numpy) search the same rows beside it. ``index-build``: ``build_index`` over a folder of rendered JPEGs against a
simple script's loop, one batch after another (decode, then encode; it neither hashes the
files nor writes an index, so the peer does less work than the build).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .harness import Options, add_ratios, make_row, measure
from .models import resolve_model

__all__ = ["run_search", "run_index_build", "make_big_index", "clustered_rows", "image_folder", "render_folder"]

K = 10
PEER = "FAISS IndexFlatIP fp32 (kernel only)"
SEQUENTIAL = "sequential decode then encode"
QUERIES = [f"a photo of a {c} {s} number {i}" for i, (c, s) in enumerate(
    (c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "star"))]


def make_big_index(path: Path, name: str, digest: str, rows: int, dim: int, storage: str = "fp16",
                   clusters: int = 0) -> None:
    """An index of ``rows`` random unit rows under made-up paths (no images behind them); with
    ``clusters``, rows scattered around that many centres (``clustered_rows``) instead."""
    from vqclip.index import IndexStore

    root = path.parent / "no-images"
    root.mkdir(exist_ok=True)
    store = IndexStore.create(path, model_name=name, model_digest=digest, embed_dim=dim, storage=storage, root=root)
    rng = np.random.default_rng(0)
    free: list[int] = []
    try:
        for lo in range(0, rows, 100_000):
            n = min(100_000, rows - lo)
            if clusters:
                x = clustered_rows(rng, n, dim, clusters)
            else:
                x = rng.standard_normal((n, dim), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
            store.add([(f"img/{lo + i:07d}.jpg", 1000, 0, "0" * 64) for i in range(n)], x, free)
    finally:
        store.close()


def clustered_rows(rng: np.random.Generator, n: int, dim: int, clusters: int, spread: float = 0.6) -> np.ndarray:
    """``n`` unit rows, each a centre (of ``clusters``, drawn from ``np.random.default_rng(1)``
    by every call) plus noise of norm ~``spread``: a cosine of ~0.86 to its centre, structured
    as embeddings of real collections are, where uniformly random rows in 512 dimensions have
    no near neighbours for an approximate index to find."""
    centres = np.random.default_rng(1).standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_search(opts: Options, job: str = "search") -> dict:
    from vqclip.encoder import open_encoder
    from vqclip.errors import BackendUnavailableError, VqclipError

    n_rows = (opts.rows or ((100_000,) if opts.quick else (1_000_000,)))[0]
    rows: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
        for name in opts.models:
            model = resolve_model(name)
            encoders = {}
            for backend, p in opts.encoder_pairs():
                try:
                    encoders[f"{backend} {p}"] = open_encoder(model.source, backend, precision=p, device=opts.device)
                except (BackendUnavailableError, VqclipError) as e:
                    skipped.append(f"{model.label} {backend} {p}: {e}")
            if not encoders:
                continue
            first = next(iter(encoders.values()))
            dim = first.encode_texts(["a"]).shape[1]
            path = Path(tmp) / f"{len(rows)}.vqindex"
            make_big_index(path, first.identity.name, first.identity.digest, n_rows, dim)
            case = f"{model.label}, {n_rows:,} x {dim} fp16, text query, k={K}"
            with contextlib.ExitStack() as stack:
                calls = _search_calls(path, encoders, stack)
                if opts.peers:
                    calls.update(_peers(path, first.encode_texts([QUERIES[0]]), opts, skipped))
                lat = measure(calls, opts.seconds * 2, min_rounds=5)
            for label, xs in lat.items():
                rows.append(make_row(job, case, label.strip(), xs, unit="queries/s",
                                     peer=not label.startswith(("vqclip", "  ")), keep_cdf=True,
                                     stage=label.startswith("  "), model=model.label, index_rows=n_rows, dim=dim,
                                     reproduce=opts.invocation(job, model=model.name, rows=n_rows)))
    # The peers search only: their ratio is to vqclip's kernel stage, the same work.
    add_ratios([r for r in rows if r["runner"].startswith("kernel") or r["peer"]], PEER)
    return {"rows": rows, "skipped": skipped}


def _search_calls(path: Path, encoders: dict, stack: contextlib.ExitStack) -> dict[str, Callable[[], Any]]:
    """Per query encoder: the whole ``Index.search``, then each of its stages alone (indented
    names: tokenise, text encoder, kernel, SQLite lookup), on the same index."""
    from vqclip.index import Index
    from vqclip.index.store import KERNEL_DTYPES
    from vqclip.kernels import Gallery
    from vqclip.tokenizer import tokenize

    calls: dict[str, Callable[[], Any]] = {}
    for label, enc in encoders.items():
        idx = stack.enter_context(Index.open(path, encoder=enc))
        s = idx.store
        gallery = Gallery.from_arrays(s.vectors, s.norms, s.scales, dtype=KERNEL_DTYPES[s.header.storage])
        emb = enc.encode_texts([QUERIES[0]])
        scores, ids = gallery.search(emb, K, threads=idx.threads)
        ids_q = tokenize([QUERIES[0]], context_length=enc.context_length)
        calls[f"vqclip Index.search, {label}"] = _cycle(lambda q, idx=idx: idx.search(text=q, k=K))
        calls[f"  tokenise ({label})"] = _cycle(lambda q, n=enc.context_length: tokenize([q], context_length=n))
        calls[f"  text encoder ({label})"] = lambda enc=enc, x=ids_q: enc.encode_text(x)
        calls[f"  kernel ({label})"] = lambda g=gallery, e=emb, t=idx.threads: g.search(e, K, threads=t)
        calls[f"  lookup ({label})"] = lambda idx=idx, s=scores, i=ids: idx.lookup(s, i, K)
    return calls


def _cycle(fn: Callable[[str], Any]) -> Callable[[], Any]:
    """A call that takes the next query text each time (no cache can answer a repeat)."""
    state = {"i": 0}

    def call() -> Any:
        state["i"] += 1
        return fn(QUERIES[state["i"] % len(QUERIES)] + f" {state['i']}")

    return call


def _peers(path: Path, q: np.ndarray, opts: Options, skipped: list[str]) -> dict[str, Callable[[], Any]]:
    """The top-k job's exact peers over the same rows in fp32 (none has exact fp16 search)."""
    from vqclip.index import IndexStore

    from .job_topk import exact_peers

    store = IndexStore.open(path)
    try:
        x = np.asarray(store.vectors[:store.count], dtype=np.float32)
    finally:
        store.close()
    peers, notes = exact_peers(x, opts)
    skipped += notes
    return {f"{name} (kernel only)": (lambda fn=fn: fn(q)) for name, fn in peers.items()}


def render_folder(folder: Path, n: int) -> None:
    """``n`` rendered 256x256 scenes of the shapes world as JPEGs."""
    from PIL import Image

    from vqclip.zoo import shapes

    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(shapes.sample_scenes("test", 0, n)):
        Image.fromarray(shapes.render(scene, size=256, supersample=2)).save(folder / f"{i:05d}.jpg", quality=90)


def image_folder(work: Path, label: str, opts: Options, sizes: tuple[int, int],
                 random_sizes: tuple[int, int]) -> tuple[Path, int]:
    """A folder of rendered JPEGs under ``work`` (made once per size) and its image count:
    ``--rows`` if given, else (quick, full) of ``sizes``, at most ``random_sizes`` for a model
    on random weights."""
    n = (opts.rows or (sizes[0] if opts.quick else sizes[1],))[0]
    if "random" in label and not opts.rows:
        n = min(n, random_sizes[0] if opts.quick else random_sizes[1])
    folder = work / f"images-{n}"
    if not folder.exists():
        render_folder(folder, n)
    return folder, n


def run_index_build(opts: Options, job: str = "index-build") -> dict:
    from vqclip.encoder import open_encoder
    from vqclip.index import build_index

    rows: list[dict] = []
    rounds = 2 if opts.quick else 3
    backend, p = opts.preferred_pair()
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
        work = Path(tmp)
        for name in opts.models:
            model = resolve_model(name)
            # a ViT-sized random model: fewer images, the cost per image is what counts
            folder, n = image_folder(work, model.label, opts, sizes=(128, 384), random_sizes=(32, 64))
            enc = open_encoder(model.source, backend, precision=p, device=opts.device)
            enc.encode_image(enc.preprocess([_first_image(folder)] * 2))  # warm-up: sessions, arenas
            case = f"{model.label}, {n} JPEGs 256px, {backend} {p}, fp16 index"
            times: dict[str, list] = {"vqclip build_index": [], SEQUENTIAL: []}
            for r in range(rounds):  # alternate the two, so load hits both alike
                times[SEQUENTIAL].append(_sequential(folder, enc))
                times["vqclip build_index"].append(
                    build_index(folder, work / f"idx-{r}", enc, storage="fp16", progress=False, force=True).timings)
            for label, ts in times.items():
                walls = [t.wall_s for t in ts]
                mid = ts[int(np.argsort(walls)[len(walls) // 2])]  # the median run's breakdown
                rows.append(make_row(job, case, label, walls, items=n, unit="img/s", peer=label == SEQUENTIAL,
                                     model=model.label, images=n, encoder=f"{backend} {p}", encode_s=mid.encode_s,
                                     wait_s=mid.wait_s, read_decode_s=mid.read_decode_s,
                                     preprocess_s=mid.preprocess_s,
                                     not_encode_share=max(0.0, mid.wall_s - mid.encode_s) / mid.wall_s,
                                     reproduce=opts.invocation(job, model=model.name)))
    add_ratios(rows, SEQUENTIAL)
    return {"rows": rows, "skipped": []}


def _first_image(folder: Path):
    from vqclip.decode import read_and_decode

    return read_and_decode(str(next(iter(sorted(folder.iterdir()))))).image


def _sequential(folder: Path, enc) -> Any:
    """The peer: decode and preprocess a batch in this thread, then encode it; no overlap."""
    from vqclip.decode import Timings, read_and_decode

    t = Timings()
    paths = sorted(str(p) for p in folder.iterdir())
    t0 = time.perf_counter()
    for i in range(0, len(paths), 32):
        a = time.perf_counter()
        imgs = [read_and_decode(p).image for p in paths[i:i + 32]]
        b = time.perf_counter()
        px = enc.preprocess(imgs)
        c = time.perf_counter()
        enc.encode_image(px)
        t.read_decode_s += b - a
        t.preprocess_s += c - b
        t.encode_s += time.perf_counter() - c
    t.wall_s = time.perf_counter() - t0
    t.wait_s = t.read_decode_s + t.preprocess_s
    t.images = len(paths)
    return t
