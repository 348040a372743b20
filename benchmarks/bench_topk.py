"""Exact cosine top-k: vqclip's fused kernels against FAISS, numpy and torch, in one run.

For each (N, D) the same random unit-norm gallery is searched by:
  - vqclip ``Gallery.search`` for each storage type (float32, float16, bfloat16, int8);
  - FAISS ``IndexFlatIP`` (faiss-cpu) on the same normalised float32 rows;
  - numpy ``argpartition(Q @ G.T)`` then a sort of the k;
  - ``torch.topk(Q @ G.T)``.
It also measures the machine's read bandwidth with a multi-threaded streaming sum over
the float32 gallery, and prints each kernel's effective GB/s (bytes of its storage read
per second) against it. Times are medians over repeats after one warm-up call.

    python benchmarks/bench_topk.py --quick          # ~1 min: N=100k, D=512
    python benchmarks/bench_topk.py --headline       # the issue's targets, N=1M, D=512
    python benchmarks/bench_topk.py                  # the full grid (long on 2 cores)

Results go to benchmarks/results/bench_topk_<mode>.json (written atomically).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vqclip import kernels as K  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STORAGES = ("float32", "float16", "bfloat16", "int8")
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}

MODES = {
    # name: (N values, D values, B values, k values)
    "quick": ([100_000], [512], [1, 16, 256], [10]),
    "headline": ([1_000_000], [512], [1, 256], [10]),
    "full": ([10_000, 100_000, 1_000_000], [512, 768], [1, 16, 256], [1, 10, 100]),
}


def timed(fn: Callable[[], object], repeat: int, budget_s: float) -> tuple[float, float]:
    """Median wall and process-CPU time in ms of fn() over up to `repeat` runs.

    The CPU time (all threads of this process) is the figure to read on a machine shared
    with other jobs: preemption inflates wall time but not CPU time. With threads > 1 it
    also counts OpenMP's spin-waiting, so compare CPU times at --threads 1.
    """
    fn()  # warm-up: page faults, thread pools, lazy init
    walls: list[float] = []
    cpus: list[float] = []
    start = time.perf_counter()
    while len(walls) < repeat and (len(walls) < 2 or time.perf_counter() - start < budget_s):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def random_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 65536):  # chunks: no float64 temporary of the whole gallery
        c = rng.standard_normal((min(65536, n - lo), d), dtype=np.float32)
        out[lo : lo + len(c)] = c / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def recall(ids: np.ndarray, true_ids: np.ndarray) -> float:
    hits = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(ids, true_ids))
    return hits / true_ids.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", dest="mode", const="quick")
    group.add_argument("--headline", action="store_const", dest="mode", const="headline")
    ap.add_argument("--n", type=int, nargs="*", help="override gallery sizes")
    ap.add_argument("--d", type=int, nargs="*", help="override dimensions")
    ap.add_argument("--b", type=int, nargs="*", help="override query batch sizes")
    ap.add_argument("--k", type=int, nargs="*", help="override k values")
    ap.add_argument("--storages", nargs="*", default=list(STORAGES), choices=STORAGES)
    ap.add_argument("--peers", nargs="*", default=["faiss", "torch", "numpy"], choices=["faiss", "torch", "numpy"])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every method")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of repeats per measurement")
    ap.add_argument("--tag", default="", help="suffix for the JSON file name")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/bench_topk_<mode>.json)")
    args = ap.parse_args()
    mode = args.mode or "full"
    ns, ds, bs, ks = MODES[mode]
    ns, ds, bs, ks = args.n or ns, args.d or ds, args.b or bs, args.k or ks
    threads = args.threads

    peers: dict[str, object] = {}
    if "faiss" in args.peers:
        try:
            import faiss

            faiss.omp_set_num_threads(threads)
            peers["faiss"] = faiss
        except ImportError:
            print("faiss-cpu not installed (pip install faiss-cpu): FAISS column skipped")
    if "torch" in args.peers:
        import torch

        torch.set_num_threads(threads)
        peers["torch"] = torch
    if "numpy" in args.peers:
        peers["numpy"] = np

    load_start = os.getloadavg()  # other jobs on the machine: recorded with the figures
    info = K.info()
    print(f"vqclip kernels: simd={info['simd']} openmp={info['openmp']} threads={threads}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    rng = np.random.default_rng(0)
    rows_out: list[dict] = []
    header = (f"{'N':>8} {'D':>4} {'B':>4} {'k':>4}  {'method':<16} {'ms':>10} {'cpu-ms':>10} {'GB/s':>7} "
              f"{'%bw':>5} {'%bw-cpu':>7} {'vs faiss':>9} {'vs torch':>9} {'recall':>7}")

    for n in ns:
        for d in ds:
            g = random_unit(rng, n, d)
            galleries = {s: K.Gallery.from_rows(g, s) for s in args.storages}
            bw_ms, bw_cpu_ms = timed(lambda: K.stream_sum(g, threads=threads), args.repeat, args.budget)
            bw = g.nbytes / bw_ms / 1e6
            bw_cpu = g.nbytes / bw_cpu_ms / 1e6
            print(f"\nN={n} D={d}: read bandwidth (streaming sum of {g.nbytes / 1e9:.2f} GB, "
                  f"{threads} threads): {bw:.1f} GB/s wall, {bw_cpu:.1f} GB/s per CPU-second")
            print(header)
            index = None
            if "faiss" in peers:
                index = peers["faiss"].IndexFlatIP(d)
                index.add(g)
            for b in bs:
                q = random_unit(rng, b, d)
                for k in ks:
                    methods: dict[str, Callable[[], tuple]] = {}
                    for s, gal in galleries.items():
                        methods[f"vqclip-{s}"] = lambda gal=gal: gal.search(q, k, threads=threads)
                    if index is not None:
                        methods["faiss-flatip"] = lambda: index.search(q, k)  # (scores, ids)
                    if "torch" in peers:
                        torch = peers["torch"]
                        tq, tg = torch.from_numpy(q), torch.from_numpy(g)

                        def torch_topk():
                            v, i = torch.topk(tq @ tg.T, k, dim=1)
                            return v.numpy(), i.numpy()

                        methods["torch-topk"] = torch_topk
                    if "numpy" in peers:

                        def numpy_topk():
                            s = q @ g.T  # (B, N)
                            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                            order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
                            ids = np.take_along_axis(part, order, 1)
                            return np.take_along_axis(s, ids, 1), ids

                        methods["numpy-argpart"] = numpy_topk

                    truth = galleries["float32"].search(q, k)[1] if "float32" in galleries else None
                    results: dict[str, dict] = {}
                    for name, fn in methods.items():
                        ms, cpu_ms = timed(fn, args.repeat, args.budget)
                        _, ids = fn()
                        storage = name.split("-", 1)[1] if name.startswith("vqclip-") else "float32"
                        gbs = n * d * BYTES[storage] / ms / 1e6
                        results[name] = {
                            "ms": ms,
                            "cpu_ms": cpu_ms,
                            "gb_s": gbs,
                            "pct_bw": 100 * gbs / bw,
                            "pct_bw_cpu": 100 * (n * d * BYTES[storage] / cpu_ms / 1e6) / bw_cpu,
                            "recall": None if truth is None else recall(np.asarray(ids), truth),
                        }
                    for name, r in results.items():
                        vs_f = results["faiss-flatip"]["ms"] / r["ms"] if "faiss-flatip" in results else None
                        vs_t = results["torch-topk"]["ms"] / r["ms"] if "torch-topk" in results else None
                        r.update(vs_faiss=vs_f, vs_torch=vs_t)
                        if "faiss-flatip" in results:
                            r["vs_faiss_cpu"] = results["faiss-flatip"]["cpu_ms"] / r["cpu_ms"]
                        if "torch-topk" in results:
                            r["vs_torch_cpu"] = results["torch-topk"]["cpu_ms"] / r["cpu_ms"]
                        fmt = lambda x, f: f"{x:{f}}" if x is not None else "-"  # noqa: E731
                        print(f"{n:>8} {d:>4} {b:>4} {k:>4}  {name:<16} {r['ms']:>10.2f} {r['cpu_ms']:>10.2f} "
                              f"{r['gb_s']:>7.1f} {r['pct_bw']:>5.0f} {r['pct_bw_cpu']:>7.0f} "
                              f"{fmt(vs_f, '>8.2f')}x {fmt(vs_t, '>8.2f')}x "
                              f"{fmt(r['recall'], '>7.3f')}")
                        rows_out.append({"n": n, "d": d, "b": b, "k": k, "method": name,
                                         "read_bw_gb_s": bw, "read_bw_cpu_gb_s": bw_cpu, **r})
            del galleries, index, g

    out = args.out or RESULTS / f"bench_topk_{mode}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"mode": mode, "threads": threads, "kernels": info, "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "note": "medians; the machine was shared with other jobs while measuring",
           "loadavg_1_5_15_start": load_start, "loadavg_1_5_15_end": os.getloadavg(),
           "results": rows_out}
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
