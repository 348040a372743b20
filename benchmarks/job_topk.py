"""Job ``topk``: exact cosine top-k over N unit rows of 512, vqclip's fused kernels per storage
type beside FAISS ``IndexFlatIP``, ``torch.topk(Q @ G.T)`` and numpy, with the machine's
streaming read bandwidth (the limit no scan of the same bytes can beat) timed in the same rounds."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .harness import Options, add_ratios, make_row, measure

__all__ = ["run", "STORAGES", "exact_peers", "FAISS"]

DIM, K = 512, 10
STORAGES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
FAISS = "FAISS IndexFlatIP fp32"
BANDWIDTH = "read bandwidth (stream sum, fp32 rows)"


def default_rows(opts: Options) -> tuple[int, ...]:
    return opts.rows or ((10_000, 100_000, 300_000) if opts.quick else (10_000, 100_000, 1_000_000))


def run(opts: Options, job: str = "topk") -> dict:
    from vqclip import kernels

    storages = [STORAGES[p] for p in opts.precisions if p in STORAGES] if "precision" in opts.explicit \
        else ["float32", "float16", "int8"]
    rows: list[dict] = []
    skipped: list[str] = []
    threads = kernels.resolve_threads()
    for n in default_rows(opts):
        g = _unit_rows(n)
        galleries = {s: kernels.Gallery.from_rows(g, s) for s in storages}
        peers, notes = exact_peers(g, opts) if opts.peers else ({}, [])
        skipped += [note for note in notes if note not in skipped]
        for b in opts.batches:
            q = np.random.default_rng(1000 + b).standard_normal((b, DIM), dtype=np.float32)
            calls: dict[str, Callable[[], Any]] = {f"vqclip {s}": (lambda gal=gal: gal.search(q, K))
                                                   for s, gal in galleries.items()}
            calls.update({name: (lambda fn=fn: fn(q)) for name, fn in peers.items()})
            calls[BANDWIDTH] = lambda g=g: kernels.stream_sum(g)
            lat = measure(calls, opts.seconds)
            truth = _exact_ids(g, q)
            case = f"N={n:,} D={DIM} B={b} k={K}"
            bw = None
            for name in [BANDWIDTH, *(c for c in calls if c != BANDWIDTH)]:
                storage = name.split()[1] if name.startswith("vqclip ") else "float32"
                extra: dict[str, Any] = {"gallery_rows": n, "dim": DIM, "batch": b, "k": K, "threads": threads}
                row = make_row(job, case, name, lat[name], items=b, unit="queries/s",
                               peer=not name.startswith("vqclip"),
                               reproduce=opts.invocation(job, rows=n, batch=b), **extra)
                row["gb_s"] = n * DIM * BYTES[storage] / (row["p50_ms"] * 1e6)  # at the p50 call
                if name == BANDWIDTH:  # the limit line, not a runner: no ratio, GB/s is its figure
                    bw = row["gb_s"]
                    row.update(reference=True, peer=False, unit="GB/s", throughput=row["gb_s"], items=None)
                else:
                    row["storage"] = storage
                    row["recall_at_k"] = _recall(np.asarray(calls[name]()[1]), truth)
                    row["pct_of_bandwidth"] = 100 * row["gb_s"] / bw if bw else None
                rows.append(row)
        del galleries, peers, g
    add_ratios(rows, FAISS)
    return {"rows": rows, "skipped": skipped, "bandwidth_runner": BANDWIDTH}


def _unit_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 65536):
        c = rng.standard_normal((min(65536, n - lo), DIM), dtype=np.float32)
        out[lo:lo + len(c)] = c / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def exact_peers(g: np.ndarray, opts: Options) -> tuple[dict[str, Callable[[np.ndarray], Any]], list[str]]:
    """The exact top-k of other libraries over the unit rows ``g``, each ``fn(queries) -> (scores, ids)``;
    and a note for each one missing here."""
    import torch

    out: dict[str, Callable] = {}
    notes = []
    try:
        import faiss

        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g)
        out[FAISS] = lambda q: index.search(q, K)
    except ImportError:
        notes.append(f"{FAISS}: faiss is not installed; pip install faiss-cpu")
    gt = torch.from_numpy(g)
    out["torch.topk(Q @ G.T) fp32"] = lambda q: torch.topk(torch.from_numpy(q) @ gt.T, K)

    def numpy_topk(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = q @ g.T
        top = np.argpartition(-s, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        ids = np.take_along_axis(top, order, 1)
        return np.take_along_axis(s, ids, 1), ids

    out["numpy argpartition(Q @ G.T) fp32"] = numpy_topk
    if opts.device.startswith("cuda"):
        from vqclip import kernels

        gc = gt.to(opts.device)

        def torch_cuda(q: np.ndarray):
            s, i = torch.topk(torch.from_numpy(q).to(opts.device) @ gc.T, K)
            return s.cpu().numpy(), i.cpu().numpy()

        out["torch.topk(Q @ G.T) fp32 cuda"] = torch_cuda
        if kernels.cuda_available():
            cg = kernels.CudaGallery(kernels.Gallery.from_rows(g, "float16"))
            out["vqclip float16 cuda"] = cg.search
        else:
            notes.append("vqclip float16 cuda: the CUDA kernels are not built (VQCLIP_BUILD_CUDA=1 python setup.py "
                         "build_ext --inplace)")
    return out, notes


def _exact_ids(g: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The reference top-k ids: scores in float64 (64k rows at a time, to bound the copy)."""
    q64 = q.astype(np.float64)
    s = np.concatenate([q64 @ g[lo:lo + 65536].astype(np.float64).T for lo in range(0, len(g), 65536)], axis=1)
    top = np.argpartition(-s, K, axis=1)[:, :K]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(t.tolist())) / K for a, t in zip(ids, truth)]))
