"""Jobs ``milvus`` and ``index-build-ray``: the cluster path beside the one-machine path.

``milvus``: N unit rows in clusters (fp16 index; ``clustered_rows``) searched by the fused
kernels (``Index``, kernel and SQLite lookup) and through Milvus Lite (``MilvusIndex``) with a
FLAT (exact) and then an HNSW index on the same collection; one query at a time, k=10;
recall@10 against exact float32 search; the export's insert rate and each index's build time.
``index-build-ray``: ``embed_with_ray`` on a local Ray (started once, before timing: a cluster
is up before its jobs) against ``build_index`` on the same folder and encoder, alternated, each
opening the model as its command does; the Ray run is timed to its shards and to the index
imported from them (the output ``build_index`` makes); its wall includes its actors' start,
also timed alone (``start_s``: a job of 32 images).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .harness import Options, add_ratios, make_row, measure
from .job_search import clustered_rows, image_folder, make_big_index, render_folder
from .job_topk import _exact_ids, _recall
from .models import resolve_model

__all__ = ["run_milvus", "run_index_build_ray"]

K = 10
KERNEL = "vqclip Index fp16 (kernel + lookup)"
BUILD = "vqclip build_index"
HNSW = {"M": 16, "efConstruction": 100}  # below the export's 200: a 1M-row build in minutes on 2 cores
FLAT = "Milvus Lite FLAT"
CLUSTERS = 10_000  # ~100 rows a cluster at 1M
HNSW_RUNNER = "Milvus Lite HNSW (M=16, efC=100, ef=64)"


def run_milvus(opts: Options, job: str = "milvus") -> dict:
    from vqclip.index import Index
    from vqclip.index.milvus import MilvusIndex, export_milvus

    n = (opts.rows or ((20_000,) if opts.quick else (1_000_000,)))[0]
    dim = 512
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
        work = Path(tmp)
        idx_path = work / "rows.vqindex"
        make_big_index(idx_path, "clustered-rows", "0" * 64, n, dim, storage="fp16", clusters=CLUSTERS)
        export = export_milvus(idx_path, str(work / "bench.db"), "rows")
        target = export.target
        q_all = clustered_rows(np.random.default_rng(7), 64, dim, CLUSTERS)  # new points of the same clusters
        with Index.open(idx_path) as idx, MilvusIndex.open(target) as m:
            truth = _exact_ids(np.asarray(idx.store.vectors, dtype=np.float32) / idx.store.norms[:, None], q_all)
            # One collection, two vector indexes in turn; the kernel is timed beside each.
            lat = _time_queries({KERNEL: idx, FLAT: m}, q_all, opts)
            recall = {KERNEL: _recall_of(idx, q_all, truth), FLAT: _recall_of(m, q_all, truth)}
            hnsw_s = _reindex(m, "HNSW", HNSW)
            m.store.index_type, m.search_params = "HNSW", {"ef": 64}
            again = _time_queries({KERNEL: idx, HNSW_RUNNER: m}, q_all, opts)
            lat[KERNEL] += again[KERNEL]
            lat[HNSW_RUNNER] = again[HNSW_RUNNER]
            recall[HNSW_RUNNER] = _recall_of(m, q_all, truth)
        case = f"N={n:,} D={dim} B=1 k={K}, fp16 rows in {CLUSTERS:,} clusters"
        for name in (KERNEL, FLAT, HNSW_RUNNER):
            extra: dict[str, Any] = {"index_rows": n, "dim": dim, "k": K, "recall_at_k": recall[name]}
            if name == FLAT:
                extra.update(export_s=export.seconds, insert_rows_s=n / export.insert_s)
            if name == HNSW_RUNNER:
                extra["index_build_s"] = hnsw_s
            rows.append(make_row(job, case, name, lat[name], items=1, unit="queries/s", peer=name != KERNEL,
                                 keep_cdf=True, reproduce=opts.invocation(job, rows=n), **extra))
    add_ratios(rows, FLAT)
    return {"rows": rows, "skipped": []}


def _time_queries(indexes: dict[str, Any], q_all: np.ndarray, opts: Options) -> dict[str, list[float]]:
    """One query per call, each runner stepping through the same queries in the same order."""
    def call(ix):
        seen = iter(range(1 << 30))
        return lambda: ix.search_embeddings(q_all[next(seen) % len(q_all)][None], K)

    return measure({name: call(ix) for name, ix in indexes.items()}, opts.seconds * 3)


def _recall_of(ix, q_all: np.ndarray, truth: np.ndarray) -> float:
    ids = np.array([[h.row for h in hits] for hits in ix.search_embeddings(q_all, K)])
    return _recall(ids, truth)


def _reindex(m, index_type: str, params: dict) -> float:
    """Replace the collection's vector index (same rows): seconds to build and load it."""
    from vqclip.index.milvus import create_index

    c, name = m.store.client, m.store.collection
    t = time.perf_counter()
    c.release_collection(name)
    c.drop_index(name, "embedding")
    ip = c.prepare_index_params()
    ip.add_index("embedding", index_type=index_type, metric_type="IP", params=params)
    create_index(c, name, ip)
    c.load_collection(name)
    return time.perf_counter() - t


def run_index_build_ray(opts: Options, job: str = "index-build-ray") -> dict:
    import ray

    from vqclip.encoder import open_encoder
    from vqclip.index import build_index
    from vqclip.index.ray_embed import EncoderSpec, embed_with_ray
    from vqclip.index.shards import import_shards

    rows: list[dict] = []
    rounds = 2 if opts.quick else 3
    backend, p = opts.preferred_pair()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    try:
        with tempfile.TemporaryDirectory(prefix="vqclip-bench-") as tmp:
            work = Path(tmp)
            for name in opts.models:
                model = resolve_model(name)
                # Enough images that the job's start (Ray workers, the actors' sessions) is not all
                # it measures; that start is timed apart, as a job of one 32-image shard.
                folder, n = image_folder(work, model.label, opts, sizes=(256, 4000), random_sizes=(64, 512))
                open_encoder(model.source, backend, precision=p, device=opts.device)  # the export, made once
                spec = EncoderSpec(model.source, backend, p, opts.device)
                case = f"{model.label}, {n} JPEGs 256px, {backend} {p}, Ray on {cpus} CPUs, 1 actor"
                ray_label = "vqclip index build --ray (Ray Data, shards)"
                both_label = "vqclip index build --ray + index import"
                small = work / "images-start"
                if not small.exists():
                    render_folder(small, 32)
                times: dict[str, list[float]] = {BUILD: [], ray_label: [], both_label: []}
                start_s = []
                for r in range(rounds):  # alternate, so load hits both alike
                    t = time.perf_counter()  # as `vqclip index build` runs: open the model, then build
                    build_index(folder, work / f"idx-{r}", open_encoder(model.source, backend, precision=p,
                                                                       device=opts.device),
                                storage="fp16", progress=False, force=True)
                    times[BUILD].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    shards = work / f"shards-{model.label}-{r}"
                    embed_with_ray(folder, shards, encoder_factory=spec, progress=False)
                    times[ray_label].append(time.perf_counter() - t)
                    import_shards([shards], work / f"imported-{r}", storage="fp16", force=True)
                    times[both_label].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    embed_with_ray(small, work / f"small-{model.label}-{r}", encoder_factory=spec, progress=False)
                    start_s.append(time.perf_counter() - t)
                for label, walls in times.items():
                    rows.append(make_row(job, case, label, walls, items=n, unit="img/s", peer=label == BUILD,
                                         model=model.label, images=n, encoder=f"{backend} {p}", ray_cpus=cpus,
                                         start_s=float(np.median(start_s)) if label != BUILD else None,
                                         reproduce=opts.invocation(job, model=model.name)))
    finally:
        if started:
            ray.shutdown()
    add_ratios(rows, BUILD)
    return {"rows": rows, "skipped": []}
