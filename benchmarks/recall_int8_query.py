"""What quantising the query to int8 (the VNNI `vpdpbusd` design) would cost in accuracy.

Today's int8 path dots a float32 query with the stored int8 rows. A VNNI kernel would
quantise the query too (per call, symmetric, max |value| -> 127) and dot int8 x int8 in
exact int32 arithmetic (the u8 x s8 shift by 128 and its per-row-sum correction are exact,
so numpy's int32 matmul gives the very same integers). This script measures, before any
kernel is written, on random normalised and on clustered (near-tie) data:

- recall@k of the int8-query ranking against today's int8 result (the kernel's own output);
- for a VNNI pre-selection of ``k * r`` candidates followed by an exact re-score of those
  candidates with the float query against the stored int8 rows, the fraction of queries
  whose final top-k is the same id set as today's, and the recall@k.

A pre-selection factor r with "same set" at 1.000 keeps results identical to today's int8
path, which is the design issue 4's follow-up aims for. Prints a table; no timing.

Example: ``python benchmarks/recall_int8_query.py --n 200000 --d 512 --b 200``.
"""

from __future__ import annotations

import argparse

import numpy as np

from vqclip import kernels as K  # noqa: E402


def make_data(kind: str, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """(n, d) float32: unit-norm Gaussian rows, or rows near 8 centres (near-ties)."""
    if kind == "random":
        x = rng.standard_normal((n, d), dtype=np.float32)
    else:
        c = rng.standard_normal((8, d), dtype=np.float32)
        x = c[rng.integers(0, 8, n)] + np.float32(0.05) * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def quantise_queries(q: np.ndarray) -> np.ndarray:
    """(b, d) float32 -> (b, d) int32 holding int8 values, per-query max |value| -> 127."""
    peak = np.abs(q).max(axis=1, keepdims=True)
    return np.clip(np.rint(q * (127.0 / peak)), -127, 127).astype(np.int32)


def topk_rows(s: np.ndarray, k: int) -> np.ndarray:
    """(b, n) scores -> (b, k) ids of the k largest per row (order within k irrelevant)."""
    return np.argpartition(-s, k - 1, axis=1)[:, :k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--b", type=int, default=200, help="queries per data set")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--r", type=int, nargs="*", default=[1, 2, 4, 8], help="pre-selection factors")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    k = args.k
    print(f"N={args.n} D={args.d} B={args.b} k={k}; int8 gallery (per-row scale), int8 query (per-call scale)")
    print(f"{'data':10} {'method':28} {'recall@k':>9} {'same set':>9}")
    for kind in ("random", "clustered"):
        g = make_data(kind, rng, args.n, args.d)
        q = make_data(kind, rng, args.b, args.d)
        gal = K.Gallery.from_rows(g, "int8")
        _scores, today = gal.search(q, k)  # (b, k) ids: today's int8 path (float query)
        data, norms, scales = K.encode_rows(g, "int8")
        inv = np.where(norms > 0, scales / np.maximum(norms, 1e-30), 0.0).astype(np.float64)  # (n,)
        qi = quantise_queries(q)  # (b, d) int8 values
        s_int = (qi @ data.astype(np.int32).T).astype(np.float64) * inv  # (b, n) exact int dots, as cosines
        s_float = (q.astype(np.float64) @ data.astype(np.float64).T) * inv  # (b, n) today's scores
        truth = [set(t.tolist()) for t in today]

        def report(name: str, ids: np.ndarray) -> None:
            sets = [set(a.tolist()) for a in ids]
            recall = sum(len(a & t) for a, t in zip(sets, truth)) / (len(truth) * k)
            same = sum(a == t for a, t in zip(sets, truth)) / len(truth)
            print(f"{kind:10} {name:28} {recall:9.4f} {same:9.3f}")

        report("int8 query, no re-score", topk_rows(s_int, k))
        for r in args.r:
            cand = topk_rows(s_int, k * r)  # (b, k*r) VNNI pre-selection
            sub = np.take_along_axis(s_float, cand, axis=1)  # exact re-score on stored values
            report(f"pre-select k*{r}, re-score", np.take_along_axis(cand, topk_rows(sub, k), axis=1))


if __name__ == "__main__":
    main()
