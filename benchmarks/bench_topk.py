"""Exact cosine top-k: vqclip's fused kernels against FAISS, numpy and torch, in one run.

First, on raw rows (random norms, so the cosine must normalise them), side by side in
interleaved rounds:
  - the one-shot call ``vqclip.kernels.topk_cosine(q, rows, k)`` (norms fused into the scan),
    a search of a ``Gallery`` prebuilt from the same rows, and the FAISS way to the same
    answer (copy, ``normalize_L2``, ``IndexFlatIP`` add + search), with their ids compared;
  - building a ``Gallery.from_rows`` (float32, float16, int8) against a numpy copy of the rows.
Then, for each (N, D) the same random unit-norm gallery is searched by:
  - vqclip ``Gallery.search`` for each storage type (float32, float16, bfloat16, int8);
  - FAISS ``IndexFlatIP`` (faiss-cpu) on the same normalised float32 rows;
  - numpy ``argpartition(Q @ G.T)`` then a sort of the k;
  - ``torch.topk(Q @ G.T)``.
It also measures the machine's read bandwidth with a multi-threaded streaming sum over
the float32 gallery, and prints each kernel's effective GB/s (bytes of its storage read
per second) against it. Every section times its methods in interleaved rounds (one call of
each per round, after a warm-up round), so a load spike on a shared machine hits them all
alike; times are medians over the rounds, wall and process CPU.

    python benchmarks/bench_topk.py --quick          # ~1 min: N=100k, D=512
    python benchmarks/bench_topk.py --headline       # the issue's targets, N=1M, D=512
    python benchmarks/bench_topk.py                  # the full grid (long on 2 cores)

Results go to benchmarks/results/bench_topk_<mode>.json, or --out (written atomically).
For the kernels' AVX2 path on an AVX-512 machine, run with VQCLIP_SIMD=avx2 and --peers-avx2
(FAISS, OpenBLAS and MKL then run their AVX2 code too).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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


def interleaved(methods: dict[str, Callable[[], object]], rounds: int,
                budget_s: float | None = None) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU ms per method, one call of each per round after a
    warm-up round: a load spike on a shared machine hits every method alike. Stops early,
    after at least two rounds, once ``budget_s`` seconds have gone.

    The CPU time (all threads of this process) is the figure to read on a machine shared
    with other jobs: preemption inflates wall time but not CPU time. With threads > 1 it
    also counts OpenMP's spin-waiting, so compare CPU times at --threads 1.
    """
    for fn in methods.values():
        fn()
    walls: dict[str, list[float]] = {k: [] for k in methods}
    cpus: dict[str, list[float]] = {k: [] for k in methods}
    start = time.perf_counter()
    for r in range(rounds):
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
        for name, fn in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            walls[name].append((time.perf_counter() - t0) * 1e3)
            cpus[name].append((time.process_time() - c0) * 1e3)
    return {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in methods}


def raw_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Random rows with norms spread over [0.5, 2]: what a caller hands the one-shot call."""
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 65536):
        c = rng.standard_normal((min(65536, n - lo), d), dtype=np.float32)
        out[lo : lo + len(c)] = c * (rng.uniform(0.5, 2.0, (len(c), 1)) / np.linalg.norm(c, axis=1, keepdims=True))
    return out


def one_shot_section(rows: np.ndarray, bs: list[int], k: int, threads: int, faiss: object | None,
                     rounds: int) -> list[dict]:
    """One-shot topk_cosine vs a prebuilt Gallery's search vs the FAISS path, on raw rows."""
    n, d = rows.shape
    gallery = K.Gallery.from_rows(rows)
    out = []
    for b in bs:
        q = np.random.default_rng(b).standard_normal((b, d), dtype=np.float32)
        methods: dict[str, Callable[[], tuple]] = {
            "vqclip-oneshot": lambda: K.topk_cosine(q, rows, k, threads=threads),
            "vqclip-prebuilt": lambda: gallery.search(q, k, threads=threads),
        }
        if faiss is not None:

            def faiss_path():
                x = rows.copy()  # normalize_L2 works in place: the caller's rows must survive
                faiss.normalize_L2(x)
                qn = q.copy()
                faiss.normalize_L2(qn)
                index = faiss.IndexFlatIP(d)
                index.add(x)
                return index.search(qn, k)

            methods["faiss-path"] = faiss_path
        times = interleaved(methods, rounds)
        ids = {name: np.asarray(fn()[1]) for name, fn in methods.items()}
        same = {name: bool(np.array_equal(i, ids["vqclip-prebuilt"])) for name, i in ids.items()}
        print(f"\none-shot on raw rows, N={n} D={d} B={b} k={k} ({threads} threads)")
        print(f"  {'method':<18}{'ms':>10}{'cpu-ms':>10}{'vs prebuilt':>13}{'vs faiss path':>15}  ids == prebuilt")
        for name, (ms, cpu) in times.items():
            vs_pre = times["vqclip-prebuilt"][0] / ms
            vs_f = times["faiss-path"][0] / ms if "faiss-path" in times else None
            print(f"  {name:<18}{ms:>10.1f}{cpu:>10.1f}{vs_pre:>12.2f}x"
                  f"{(f'{vs_f:.2f}x' if vs_f else '-'):>15}  {same[name]}")
            out.append({"section": "oneshot", "n": n, "d": d, "b": b, "k": k, "method": name, "ms": ms,
                        "cpu_ms": cpu, "vs_prebuilt": vs_pre, "vs_faiss_path": vs_f, "ids_equal_prebuilt": same[name]})
        one = times["vqclip-oneshot"][0]
        print(f"  targets: one-shot within 2x of prebuilt: {one / times['vqclip-prebuilt'][0]:.2f}x "
              + (f"; >= 8x the FAISS path: {times['faiss-path'][0] / one:.1f}x" if "faiss-path" in times else "")
              + f"; same ids: {all(same.values())}")
    return out


def build_section(rows: np.ndarray, threads: int, rounds: int) -> list[dict]:
    """Gallery.from_rows per storage type against a numpy copy of the same rows."""
    n, d = rows.shape
    methods: dict[str, Callable[[], object]] = {"numpy-copy": rows.copy}
    for s in ("float32", "float16", "int8"):
        methods[f"from_rows-{s}"] = lambda s=s: K.Gallery.from_rows(rows, s)
    times = interleaved(methods, rounds)
    copy_ms = times["numpy-copy"][0]
    print(f"\nbuilding a Gallery, N={n} D={d} ({threads} kernel threads; numpy copies on one)")
    out = []
    for name, (ms, cpu) in times.items():
        print(f"  {name:<18}{ms:>10.1f} ms{cpu:>10.1f} cpu-ms{ms / copy_ms:>8.2f}x the copy")
        out.append({"section": "build", "n": n, "d": d, "method": name, "ms": ms, "cpu_ms": cpu,
                    "vs_copy": ms / copy_ms})
    return out


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
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the search section")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds after which a search section "
                    "stops adding rounds (at least two)")
    ap.add_argument("--no-oneshot", action="store_true", help="skip the one-shot and build sections")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the one-shot and build sections")
    ap.add_argument("--peers-avx2", action="store_true",
                    help="set FAISS_SIMD_LEVEL=AVX2 (FAISS_OPT_LEVEL=avx2 for older wheels), "
                         "OPENBLAS_CORETYPE=Haswell, MKL_ENABLE_INSTRUCTIONS=AVX2 "
                         "before importing the peers (pair with VQCLIP_SIMD=avx2)")
    ap.add_argument("--tag", default="", help="suffix for the JSON file name")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/bench_topk_<mode>.json)")
    args = ap.parse_args()
    mode = args.mode or "full"
    ns, ds, bs, ks = MODES[mode]
    ns, ds, bs, ks = args.n or ns, args.d or ds, args.b or bs, args.k or ks
    threads = args.threads
    if args.peers_avx2:  # read when the libraries load, so before any import of them
        os.environ.update(FAISS_SIMD_LEVEL="AVX2", FAISS_OPT_LEVEL="avx2", OPENBLAS_CORETYPE="Haswell",
                          MKL_ENABLE_INSTRUCTIONS="AVX2")

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
    print(f"vqclip kernels: simd={info['simd']} (cpu class {info['cpu_class']}) openmp={info['openmp']} "
          f"threads={threads}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load_start[0]:.2f}")
    if "faiss" in peers:
        cfg = getattr(peers["faiss"], "SIMDConfig", None)  # faiss >= 1.12 dispatches at run time
        print(f"faiss {peers['faiss'].__version__}: SIMD level {cfg.get_level_name() if cfg else 'per wheel'}")
    rng = np.random.default_rng(0)
    rows_out: list[dict] = []
    if not args.no_oneshot:
        for n in ns:
            for d in ds:
                raw = raw_rows(rng, n, d)
                rows_out += one_shot_section(raw, bs, ks[0], threads, peers.get("faiss"), args.rounds)
                rows_out += build_section(raw, threads, args.rounds)
                del raw
    header = (f"{'N':>8} {'D':>4} {'B':>4} {'k':>4}  {'method':<16} {'ms':>10} {'cpu-ms':>10} {'GB/s':>7} "
              f"{'%bw':>5} {'%bw-cpu':>7} {'vs faiss':>9} {'vs torch':>9} {'recall':>7}")

    for n in ns:
        for d in ds:
            g = random_unit(rng, n, d)
            galleries = {s: K.Gallery.from_rows(g, s) for s in args.storages}
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
                    # One call of each method per round, the read-bandwidth probe among them.
                    times = interleaved({**methods, "stream-sum": lambda: K.stream_sum(g, threads=threads)},
                                        args.repeat, args.budget)
                    bw_ms, bw_cpu_ms = times.pop("stream-sum")
                    bw, bw_cpu = g.nbytes / bw_ms / 1e6, g.nbytes / bw_cpu_ms / 1e6
                    print(f"\nN={n} D={d} B={b} k={k}: read bandwidth (streaming sum of {g.nbytes / 1e9:.2f} GB, "
                          f"{threads} threads): {bw:.1f} GB/s wall, {bw_cpu:.1f} GB/s per CPU-second")
                    print(header)
                    results: dict[str, dict] = {}
                    for name, fn in methods.items():
                        ms, cpu_ms = times[name]
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
                        rows_out.append({"section": "search", "n": n, "d": d, "b": b, "k": k, "method": name,
                                         "read_bw_gb_s": bw, "read_bw_cpu_gb_s": bw_cpu, **r})
            del galleries, index, g

    out = args.out or RESULTS / f"bench_topk_{mode}{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"mode": mode, "threads": threads, "kernels": info, "machine": platform.platform(),
           "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python " + " ".join(sys.argv),
           "env": {k: os.environ[k] for k in ("VQCLIP_SIMD", "FAISS_SIMD_LEVEL", "FAISS_OPT_LEVEL", "OPENBLAS_CORETYPE",
                                              "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS") if k in os.environ},
           "note": "medians; the machine was shared with other jobs while measuring",
           "loadavg_1_5_15_start": load_start, "loadavg_1_5_15_end": os.getloadavg(),
           "results": rows_out}
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)
    print(f"\nwrote {out}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
