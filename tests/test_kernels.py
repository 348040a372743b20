"""vqclip.kernels against a float64 numpy brute force, on every SIMD path.

Index comparisons are tie-aware (as FAISS's tests do): a returned id is right when its
reference score is within ATOL of the k-th best; every id clearly above the k-th best
must be returned. ATOL = 1e-5: float32 accumulation over D <= 512 of unit vectors errs by
~1e-7 per score, so 1e-5 leaves two orders of margin and still catches a wrong row.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vqclip import kernels as K
from vqclip.errors import BackendUnavailableError, InputShapeError, InvalidInputError

ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
PATHS = K.info()["supported"]


# ----------------------------------------------------------------------- helpers


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def reference(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine [B, N] in float64 of the values as given (dequantise before calling)."""
    return unit(q) @ unit(rows).T


def assert_topk(scores: np.ndarray, ids: np.ndarray, ref: np.ndarray, k: int, atol: float = ATOL) -> None:
    b, n = ref.shape
    kk = min(k, n)
    assert scores.shape == ids.shape == (b, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert np.all(ids[:, kk:] == -1) and np.all(np.isneginf(scores[:, kk:]))
    for i in range(b):
        got = ids[i, :kk]
        assert len(set(got.tolist())) == kk, f"query {i}: duplicate ids {got}"
        assert np.all(np.diff(scores[i, :kk]) <= 0), f"query {i}: not sorted"
        np.testing.assert_allclose(scores[i, :kk], ref[i, got], atol=atol, rtol=0)
        kth = np.sort(ref[i])[::-1][kk - 1]
        assert np.all(ref[i, got] >= kth - atol), f"query {i}: returned a row below the k-th"
        must = np.flatnonzero(ref[i] > kth + atol)
        assert set(must.tolist()) <= set(got.tolist()), f"query {i}: missed a clear top-k row"


def recall(ids: np.ndarray, true_ids: np.ndarray) -> float:
    """k-recall@k: the fraction of the true top-k found in the returned top-k."""
    hits = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(ids, true_ids))
    return hits / true_ids.size


def dequantised(g: K.Gallery) -> np.ndarray:
    parts = []
    for data, _norms, scales in g.segments:
        if g.dtype == "bfloat16":
            parts.append((data.astype(np.uint32) << 16).view(np.float32).astype(np.float64))
        elif g.dtype == "int8":
            parts.append(data.astype(np.float64) * scales[:, None].astype(np.float64))
        else:
            parts.append(data.astype(np.float64))
    return np.concatenate(parts)


def clustered(rng: np.random.Generator, n: int, d: int, centres: int = 8, noise: float = 1e-3) -> np.ndarray:
    """Rows near a few centres: many scores within ~1e-3 of each other (near-ties)."""
    c = rng.standard_normal((centres, d))
    return (c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------- exactness


# (B, N, D, k, threads): B < 4 takes the direct path, B >= 4 the packed GEMM-form tile
# kernel (B = 17, 70, 130: whole and partial query tiles); D not a multiple of 8/16
# exercises the masked and scalar tails; k = 1 is the argmax case, k > 64 the
# nth_element buffer instead of the heap.
CASES = [
    (1, 3000, 512, 10, 2),
    (1, 1001, 67, 1, 1),
    (3, 2000, 33, 5, 2),
    (5, 1500, 100, 7, 1),
    (17, 2500, 512, 100, 2),
    (70, 1200, 129, 10, 2),
    (130, 700, 16, 150, 2),
]


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b,n,d,k,threads", CASES)
@pytest.mark.parametrize("api", ["one-shot", "gallery"])
def test_float32_matches_float64_reference(rng, simd, b, n, d, k, threads, api):
    # one-shot: raw rows, norms summed in the scan; gallery: factors computed beforehand.
    q = rng.standard_normal((b, d)).astype(np.float32)
    g = rng.standard_normal((n, d)).astype(np.float32)
    if api == "one-shot":
        scores, ids = K.topk_cosine(q, g, k, threads=threads, simd=simd)
    else:
        scores, ids = K.Gallery.from_rows(g).search(q, k, threads=threads, simd=simd)
    assert_topk(scores, ids, reference(q, g), k)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("b", [1, 9])
def test_storage_types_are_exact_on_their_stored_values(rng, simd, dtype, b):
    d = 75
    q = rng.standard_normal((b, d)).astype(np.float32)
    g = K.Gallery.from_rows(rng.standard_normal((1800, d)), dtype)
    scores, ids = g.search(q, 12, simd=simd, threads=2)
    assert_topk(scores, ids, reference(q, dequantised(g)), 12)


@pytest.mark.parametrize("simd", PATHS)
def test_clustered_near_ties_float32(rng, simd):
    q = clustered(rng, 6, 64)
    g = clustered(rng, 3000, 64)
    scores, ids = K.topk_cosine(q, g, 20, simd=simd, threads=2)
    assert_topk(scores, ids, reference(q, g), 20)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [1, 8])
@pytest.mark.parametrize("k", [1, 4])
def test_exact_ties_go_to_the_lower_id_across_threads(rng, simd, b, k):
    d, n = 40, 4000
    g = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((b, d)).astype(np.float32)
    dup = (q[0] * 3).astype(np.float32)  # same direction as query 0: cosine 1
    for row in (3900, 7, 2500, 1999):  # spread over both threads' slices
        g[row] = dup
    scores, ids = K.topk_cosine(q, g, k, threads=2, simd=simd)
    assert ids[0].tolist() == [7, 1999, 2500, 3900][:k]
    assert len(set(scores[0].tolist())) == 1


def test_float16_subnormals_match_between_paths(rng):
    # Values around 1e-6 are subnormal in float16: the scalar converter renormalises them.
    g = (rng.standard_normal((300, 24)) * 1e-6).astype(np.float16)
    q = rng.standard_normal((2, 24)).astype(np.float32)
    results = [K.topk_cosine(q, g, 9, simd=p) for p in PATHS]
    ref = reference(q, g.astype(np.float64))
    for scores, ids in results:
        assert_topk(scores, ids, ref, 9, atol=1e-4)  # float16 rows: scores good to ~1e-4


# ----------------------------------------------------------------------- one-shot (fused norms)


def odd_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Random rows with some whose float32 sum of squares is out of range: zero, tiny
    (squares underflow), huge (squares overflow) and subnormal, spread over the blocks."""
    g = rng.standard_normal((n, d)).astype(np.float32)
    g[[0, n // 3]] = 0
    g[[5, n // 2]] *= np.float32(1e-25)
    g[[7, n - 1]] *= np.float32(1e25)
    g[n // 4, :3] = np.float32(1e-40)  # subnormal float32 values, the rest zero
    g[n // 4, 3:] = 0
    return g


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_shot_rows_out_of_float32_range_take_the_float64_path(rng, simd, b, dtype):
    # B=1: direct path; B=3: norms on the first query's pass, reused by the others; B=8: tile path.
    n, d = 2500, 70
    g = odd_rows(rng, n, d)
    if dtype == "float16":  # float16 cannot hold 1e25: huge rows become its largest values
        g = np.clip(g, -60000, 60000).astype(np.float16)
    q = rng.standard_normal((b, d)).astype(np.float32)
    q[0] = g[7].astype(np.float32) / np.float32(1e20) if dtype == "float32" else q[0]  # a huge row wins
    scores, ids = K.topk_cosine(q, g, n, threads=2, simd=simd)
    assert not np.isnan(scores).any()
    assert_topk(scores, ids, reference(q, g.astype(np.float64)), n, atol=1e-4 if dtype == "float16" else ATOL)
    zero = {i: s for i, s in zip(ids[0].tolist(), scores[0].tolist()) if i in (0, n // 3)}
    assert zero == {0: 0.0, n // 3: 0.0}


@pytest.mark.parametrize("simd", PATHS)
def test_one_shot_agrees_with_the_prebuilt_gallery(rng, simd):
    g = clustered(rng, 6000, 96, centres=64, noise=0.05)
    for b in (1, 3, 20):
        q = rng.standard_normal((b, 96)).astype(np.float32)
        s1, i1 = K.topk_cosine(q, g, 25, simd=simd, threads=2)
        s2, i2 = K.Gallery.from_rows(g).search(q, 25, simd=simd, threads=2)
        np.testing.assert_allclose(s1, s2, atol=1e-6, rtol=0)  # only the norms' rounding differs
        assert_topk(s1, i1, reference(q, g), 25)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [1, 3, 8])
def test_one_shot_threads_give_identical_results(rng, simd, b):
    g = odd_rows(rng, 7001, 33)
    q = rng.standard_normal((b, 33))
    one = K.topk_cosine(q, g, 40, threads=1, simd=simd)
    for t in (2, 3):
        for x, y in zip(one, K.topk_cosine(q, g, 40, threads=t, simd=simd)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [0, 1, 3, 8])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_one_shot_names_the_first_non_finite_gallery_row(rng, simd, b, bad):
    # The same error as a Gallery built from the rows gives; with bad rows in both threads'
    # slices, the first one is named, not the first one a thread happened to meet.
    g = rng.standard_normal((6000, 40)).astype(np.float32)
    g[5000, 3] = bad
    g[1234, 39] = bad
    q = rng.standard_normal((b, 40)).astype(np.float32)
    with pytest.raises(InputShapeError, match=r"^gallery row 1234 contains NaN or inf; clean or re-encode it$"):
        K.topk_cosine(q, g, 5, threads=2, simd=simd)
    with pytest.raises(InputShapeError, match=r"^gallery row 1234 contains NaN or inf"):
        K.topk_cosine(q, g.astype(np.float16), 5, threads=2, simd=simd)
    with pytest.raises(InputShapeError, match=r"^gallery row 1234 contains NaN or inf"):
        K.Gallery.from_arrays(g)


# ----------------------------------------------------------------------- encoding


def numpy_encoding(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The reference encoding in numpy: float64 norms of the stored values."""
    if dtype == "float32":
        return x, np.linalg.norm(x.astype(np.float64), axis=1), None
    if dtype == "float16":
        data = x.astype(np.float16)
        return data, np.linalg.norm(data.astype(np.float64), axis=1), None
    if dtype == "bfloat16":
        bits = x.view(np.uint32).astype(np.uint64)
        data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        return data, np.linalg.norm((data.astype(np.uint32) << 16).view(np.float32).astype(np.float64), axis=1), None
    peak = np.abs(x).max(axis=1)
    scales = peak / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(peak > 0, np.float32(127) / peak, np.float32(0))[:, None]
    data = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    return data, np.linalg.norm(data.astype(np.float64), axis=1) * scales.astype(np.float64), scales


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("dtype", K.STORAGE_DTYPES)
@pytest.mark.parametrize("d", [1, 7, 16, 77, 512])
def test_encode_rows_matches_numpy_on_every_path(rng, simd, dtype, d):
    # d = 1, 7: only tails; 16, 512: only whole vectors; 77: both.
    x = (rng.standard_normal((300, d)) * rng.choice([1e-3, 1.0, 300.0], (300, 1))).astype(np.float32)
    x[3] = 0
    data, norms, scales = K.encode_rows(x, dtype, threads=2, simd=simd)
    want_data, want_norms, want_scales = numpy_encoding(x, dtype)
    assert data.dtype == want_data.dtype and data.shape == x.shape
    np.testing.assert_array_equal(data, want_data)  # bit for bit, on every path
    if dtype == "int8":
        np.testing.assert_array_equal(scales, want_scales)
    else:
        assert scales is None
    np.testing.assert_allclose(norms, want_norms, rtol=1e-7, atol=0)  # float64 sums, float32 result
    assert norms.dtype == np.float32 and norms[3] == 0


@pytest.mark.parametrize("simd", PATHS)
def test_float16_rounding_matches_numpy_over_the_whole_range(simd):
    # Random float32 bit patterns from below float16's subnormals to past its overflow
    # (65520 rounds to inf), plus exact ties: the scalar converter and F16C must agree with numpy.
    rng = np.random.default_rng(5)
    bits = rng.integers(0x2F000000, 0x47A00000, 200_000, dtype=np.uint32)
    bits |= rng.integers(0, 2, bits.size, dtype=np.uint32) << 31  # both signs
    ties = (np.arange(0x33000000, 0x477FF000, 0x1000, dtype=np.uint32))[::7]  # halfway cases
    x = np.concatenate([bits, ties]).view(np.float32)
    x = x[: len(x) // 64 * 64].reshape(-1, 64)
    x = x[np.all(np.abs(x) < 65520, axis=1)]  # rows with an overflow would be refused
    data, _, _ = K.encode_rows(x, "float16", simd=simd)
    np.testing.assert_array_equal(data.view(np.uint16), x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("simd", PATHS)
def test_int8_rows_too_small_for_float32_scales_encode_without_nan(simd):
    x = np.zeros((2, 20), np.float32)
    x[0, :3] = [1e-40, -3e-40, 2e-41]  # max |x| below 127 / FLT_MAX: 127 / max is inf in float32
    x[1, :2] = [1e-38, 5e-39]
    data, norms, scales = K.encode_rows(x, "int8", simd=simd)
    assert np.abs(data[:, 0:3]).max() == 127 and np.abs(data).max() <= 127
    assert np.isfinite(norms).all() and np.isfinite(scales).all()
    np.testing.assert_array_equal(data[0, :3], [42, -127, 8])  # rint(x / max * 127)


@pytest.mark.parametrize("simd", PATHS)
def test_encoding_threads_give_identical_results(rng, simd):
    x = rng.standard_normal((9001, 45)).astype(np.float32)
    for dtype in K.STORAGE_DTYPES:
        one = K.encode_rows(x, dtype, threads=1, simd=simd)
        for t in (2, 3):
            for a, b in zip(one, K.encode_rows(x, dtype, threads=t, simd=simd)):
                if a is not None:
                    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("simd", PATHS)
def test_encoding_names_the_first_bad_row_across_threads(simd):
    x = np.ones((8000, 300), np.float32)
    x[6000, 1] = np.nan
    x[2500, 0] = np.inf
    x[100, 2] = 1e6  # overflows float16 but not the others
    for dtype in K.STORAGE_DTYPES:
        with pytest.raises(InputShapeError, match=r"^rows contain NaN or inf \(first at row 2500\); clean the input$"):
            K.encode_rows(x, dtype, threads=2, simd=simd)
    x[[2500, 6000]] = 1
    with pytest.raises(InputShapeError, match=r"^row 100 overflows float16 \(\|value\| > 65504\)"):
        K.encode_rows(x, "float16", threads=2, simd=simd)
    x[100] = 3e38  # finite, but its norm overflows float32
    with pytest.raises(InputShapeError, match="first at row 100"):
        K.encode_rows(x, "float32", threads=2, simd=simd)
    x[100] = 3.3e38  # rounds past bfloat16's largest value
    with pytest.raises(InputShapeError, match="first at row 100"):
        K.encode_rows(x, "bfloat16", threads=2, simd=simd)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("dtype", K.STORAGE_DTYPES)
def test_stored_rows_norms_match_numpy(rng, simd, dtype, monkeypatch):
    # Gallery.from_arrays without norms computes them in the kernels (on the default path).
    monkeypatch.setattr(K, "_default_simd", lambda: simd)
    x = rng.standard_normal((500, 33)).astype(np.float32)
    data, want, scales = numpy_encoding(x, dtype)
    g = K.Gallery.from_arrays(data, None, scales, dtype=dtype)
    np.testing.assert_allclose(g.segments[0][1], want, rtol=1e-7, atol=0)
    if dtype in ("float16", "bfloat16"):
        bad = data.copy()
        bad[77, 5] = np.inf if dtype == "float16" else 0x7FC0  # bfloat16 NaN bits
        with pytest.raises(InputShapeError, match="^gallery row 77 contains NaN or inf"):
            K.Gallery.from_arrays(bad, dtype=dtype)


# ----------------------------------------------------------------------- int8 quality


@pytest.mark.parametrize("data", ["random", "clustered"])
def test_int8_rescore_gives_the_float32_result(rng, data):
    d, n, k = 128, 20000, 10
    make = (lambda m: rng.standard_normal((m, d)).astype(np.float32)) if data == "random" else (
        lambda m: clustered(rng, m, d, centres=32, noise=0.05))
    rows, q = make(n), make(32)
    g = K.Gallery.from_rows(rows, "int8")
    scores, ids = g.search(q, k, rescore=8, exact=rows)
    assert_topk(scores, ids, reference(q, rows), k)
    f32_scores, f32_ids = K.Gallery.from_rows(rows).search(q, k)
    np.testing.assert_allclose(scores, f32_scores, atol=ATOL, rtol=0)


def test_int8_recall_without_rescore():
    # Per-row symmetric int8 moves each cosine by ~3e-4 (random unit rows, D=128), the
    # size of the gaps between neighbouring scores near the top: the nearest neighbour is
    # always kept (1-recall@k), the whole top-k set nearly (k-recall@k). Measured: 0.985
    # here; 0.984 at D=512, N=100k (below issue 4's 0.99: a property of the storage
    # format, the kernel itself is exact on the stored values, see the test above).
    rng = np.random.default_rng(99)  # own stream: the figure must not depend on test order
    d, n, k = 128, 20000, 10
    rows = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((128, d)).astype(np.float32)
    true_ids = np.argsort(-reference(q, rows), axis=1, kind="stable")[:, :k]
    _, ids = K.Gallery.from_rows(rows, "int8").search(q, k)
    one_recall = np.mean([t[0] in a for a, t in zip(ids, true_ids)])
    assert one_recall >= 0.99
    assert recall(ids, true_ids) >= 0.98


# ----------------------------------------------------------------------- edge cases


def test_k_larger_than_gallery_pads_with_minus_one_and_neg_inf(rng):
    g = rng.standard_normal((3, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    scores, ids = K.topk_cosine(q, g, 5)
    assert_topk(scores, ids, reference(q, g), 5)
    assert ids[:, 3:].tolist() == [[-1, -1], [-1, -1]]


def test_empty_gallery_gives_all_padding():
    g = K.Gallery(16, "int8")
    for kwargs in ({}, {"rescore": 2, "exact": np.zeros((0, 16), np.float32)}):
        scores, ids = g.search(np.ones((2, 16), np.float32), 3, **kwargs)
        assert ids.tolist() == [[-1] * 3] * 2 and np.all(np.isneginf(scores))


def test_empty_query_batch_gives_empty_result(rng):
    scores, ids = K.topk_cosine(np.zeros((0, 8), np.float32), rng.standard_normal((5, 8)), 2)
    assert scores.shape == ids.shape == (0, 2)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "3"])
def test_bad_k_is_refused(rng, k):
    with pytest.raises(InvalidInputError, match="k must be"):
        K.topk_cosine(np.ones((1, 4)), np.ones((3, 4)), k)


def test_dimension_mismatch_is_refused():
    g = K.Gallery.from_rows(np.ones((3, 8)))
    with pytest.raises(InputShapeError, match="d=7 but the gallery has d=8"):
        g.search(np.ones((1, 7)), 1)
    with pytest.raises(InputShapeError, match="d=7 but the gallery has d=8"):
        g.append(np.ones((2, 7)))


@pytest.mark.parametrize("simd", PATHS)
def test_zero_vectors_score_zero_never_nan(rng, simd):
    g = rng.standard_normal((50, 20)).astype(np.float32)
    g[[4, 31]] = 0
    q = rng.standard_normal((3, 20)).astype(np.float32)
    q[1] = 0
    for dtype in K.STORAGE_DTYPES:
        scores, ids = K.Gallery.from_rows(g, dtype).search(q, 50, simd=simd)
        assert not np.isnan(scores).any()
        assert np.all(scores[1] == 0) and ids[1].tolist() == list(range(50))  # zero query
        zero_rows = {i: s for i, s in zip(ids[0].tolist(), scores[0].tolist()) if i in (4, 31)}
        assert zero_rows == {4: 0.0, 31: 0.0}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    q = np.ones((3, 4), np.float32)
    q[2, 1] = bad
    with pytest.raises(InputShapeError, match="row 2"):
        K.topk_cosine(q, np.ones((5, 4)), 1)
    g = np.ones((5, 4), np.float32)
    g[3, 0] = bad
    with pytest.raises(InputShapeError, match="row 3"):
        K.topk_cosine(np.ones((1, 4)), g, 1)
    with pytest.raises(InputShapeError, match="row 3"):
        K.Gallery(4, "int8").append(g)
    with pytest.raises(InputShapeError, match="row 1"):
        K.Gallery.from_arrays(np.ones((3, 4), np.float32), norms=np.array([1, np.nan, 1], np.float32))


def test_float16_overflow_is_refused():
    with pytest.raises(InputShapeError, match="overflows float16"):
        K.Gallery.from_rows(np.full((2, 4), 1e6, np.float32), "float16")


def test_non_contiguous_and_float64_queries_are_converted_once(rng):
    g = rng.standard_normal((300, 32)).astype(np.float32)
    q = rng.standard_normal((6, 64))[:, ::2]  # float64, strided
    assert not q.flags.c_contiguous
    s1, i1 = K.topk_cosine(q, g, 5)
    s2, i2 = K.topk_cosine(np.ascontiguousarray(q, np.float32), g, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize("q", [np.ones((2, 4), np.int32), np.ones((2, 4), bool), np.ones(4, np.float32),
                               np.ones((2, 4), np.complex64)])
def test_wrong_query_dtype_or_rank_is_refused(q):
    with pytest.raises(InputShapeError, match="queries"):
        K.topk_cosine(q, np.ones((3, 4), np.float32), 1)


def test_non_contiguous_gallery_data_is_refused_not_copied():
    data = np.ones((10, 8), np.float32)[::2]
    with pytest.raises(InputShapeError, match="C-contiguous"):
        K.Gallery.from_arrays(data)


@pytest.mark.parametrize(
    "data,kwargs,match",
    [
        (np.ones((3, 4), np.uint16), {}, "ambiguous"),
        (np.ones((3, 4), np.int32), {}, "not a storage type"),
        (np.ones((3, 4), np.int8), {}, "needs scales"),
        (np.ones((3, 4), np.float32), {"scales": np.ones(3, np.float32)}, "only for int8"),
        (np.ones((3, 4), np.float32), {"norms": np.ones(2, np.float32)}, r"shape \(3,\)"),
        (np.ones((3, 4), np.float32), {"dtype": "int4"}, "not supported"),
    ],
)
def test_bad_stored_arrays_are_refused(data, kwargs, match):
    with pytest.raises(InputShapeError, match=match):
        K.Gallery.from_arrays(data, **kwargs)


def test_rescore_argument_errors(rng):
    rows = rng.standard_normal((20, 8)).astype(np.float32)
    g = K.Gallery.from_rows(rows, "int8")
    with pytest.raises(InputShapeError, match="needs exact"):
        g.search(rows[:1], 2, rescore=2)
    with pytest.raises(InputShapeError, match="without rescore"):
        g.search(rows[:1], 2, exact=rows)
    with pytest.raises(InputShapeError, match="exact rows must be"):
        g.search(rows[:1], 2, rescore=2, exact=rows[:5])
    with pytest.raises(InputShapeError, match="rescore must be"):
        g.search(rows[:1], 2, rescore=0, exact=rows)


def test_bad_threads_and_simd_are_refused():
    g = K.Gallery.from_rows(np.ones((3, 4)))
    with pytest.raises(InvalidInputError, match="threads"):
        g.search(np.ones((1, 4)), 1, threads=0)
    with pytest.raises(BackendUnavailableError, match="neon"):
        g.search(np.ones((1, 4)), 1, simd="neon")


def test_default_threads_ignore_torch_setting(monkeypatch):
    # torch shares the OpenMP runtime: its set_num_threads must not shrink the kernels' default.
    import torch

    from vqclip._cpus import available_cpus

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert K.resolve_threads(None) == available_cpus()
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert K.resolve_threads(None) == 3
    assert K.resolve_threads(2) == 2


@pytest.mark.parametrize("env", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true", "OMP_THREAD_LIMIT": "2"}])
def test_a_smaller_team_than_asked_still_scans_every_row(env):
    # OpenMP may give fewer threads than asked: every row must still be scanned and merged.
    code = """
import json, numpy as np
from vqclip import kernels as K
rng = np.random.default_rng(0)
g = rng.standard_normal((40000, 16)).astype(np.float32)
q = rng.standard_normal((3, 16)).astype(np.float32)
out = {}
for b in (1, 3):
    s, i = K.topk_cosine(q[:b], g, 5, threads=8)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    ref = np.argsort(-(q[:b] / np.linalg.norm(q[:b], axis=1, keepdims=True)) @ gn.T, axis=1)[:, :5]
    out[b] = [i.tolist(), ref.tolist()]
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for got, ref in json.loads(res.stdout).values():
        assert got == ref


def test_large_batch_of_queries(rng):
    g = rng.standard_normal((257, 24)).astype(np.float32)
    q = rng.standard_normal((4096, 24)).astype(np.float32)
    scores, ids = K.topk_cosine(q, g, 3, threads=2)
    assert_topk(scores[::97], ids[::97], reference(q[::97], g), 3)


# ----------------------------------------------------------------------- index-friendly API


def test_memmap_is_searched_in_place_and_append_copies_nothing(rng, tmp_path):
    rows = rng.standard_normal((500, 48)).astype(np.float32)
    data, norms, scales = K.encode_rows(rows, "int8")
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.int8, shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.load(tmp_path / "g.npy", mmap_mode="r")  # read-only map, as an index opens it
    g = K.Gallery.from_arrays(ro, norms, scales)
    assert g.segments[0][0] is ro  # wrapped, not copied
    more = rng.standard_normal((100, 48)).astype(np.float32)
    assert g.append(more) == range(500, 600)
    assert g.segments[0][0] is ro and len(g) == 600
    q = rng.standard_normal((4, 48)).astype(np.float32)
    scores, ids = g.search(q, 15)
    assert_topk(scores, ids, reference(q, dequantised(g)), 15)
    g.compact()
    s2, i2 = g.search(q, 15)
    np.testing.assert_array_equal(ids, i2)
    np.testing.assert_array_equal(scores, s2)


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [2, 7])
def test_appending_equals_building_at_once(rng, simd, b):
    # Segments of 250 rows put every row at another place in its block and tile than the
    # single segment does: scores must still be bit-identical (fixed summation order).
    rows = rng.standard_normal((900, 37)).astype(np.float32)
    g = K.Gallery(37, "float16")
    for lo in range(0, 900, 250):
        g.append(rows[lo : lo + 250])
    whole = K.Gallery.from_rows(rows, "float16")
    q = rng.standard_normal((b, 37))
    for x, y in zip(g.search(q, 30, simd=simd), whole.search(q, 30, simd=simd)):
        np.testing.assert_array_equal(x, y)


def test_encode_rows_round_trips(rng):
    rows = rng.standard_normal((64, 40)).astype(np.float32)
    rows[5] = 0
    data, norms, scales = K.encode_rows(rows, "int8")
    assert data.dtype == np.int8 and np.abs(data).max() == 127 and scales[5] == 0
    back = data * scales[:, None]
    assert np.abs(back - rows).max() <= scales.max() / 2 + 1e-7  # half a quantisation step
    np.testing.assert_allclose(norms, np.linalg.norm(back, axis=1), rtol=1e-6)
    bits, _, _ = K.encode_rows(rows, "bfloat16")
    bf = (bits.astype(np.uint32) << 16).view(np.float32)
    assert np.all(np.abs(bf - rows) <= np.abs(rows) * 2**-8)  # bfloat16: 8 bits of mantissa


# ----------------------------------------------------------------------- threads and dispatch


@pytest.mark.parametrize("simd", PATHS)
@pytest.mark.parametrize("b", [1, 9, 66])
def test_threads_give_identical_results(rng, simd, b):
    g = K.Gallery.from_rows(rng.standard_normal((5001, 61)), "float16")
    q = rng.standard_normal((b, 61))
    one = g.search(q, 25, threads=1, simd=simd)
    for t in (2, 3):
        for x, y in zip(one, g.search(q, 25, threads=t, simd=simd)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("simd", PATHS)
def test_tile_scores_do_not_depend_on_the_batch(rng, simd):
    # A query's scores must be bit-identical wherever it sits in the batch (first or last
    # of a query tile, in a full or a partial tile) and whatever else is in the batch:
    # one summation order per (query, row) pair on the tile path.
    d = 45
    g = K.Gallery.from_rows(rng.standard_normal((700, d)), "bfloat16")
    q = rng.standard_normal((31, d)).astype(np.float32)
    all_scores, all_ids = g.search(q, 20, simd=simd, threads=1)
    for sub in (q[:4], q[:13], q[::-1], q[5:30:2]):
        scores, ids = g.search(sub, 20, simd=simd, threads=2)
        for row, qi in zip(range(len(sub)), [np.flatnonzero((q == s).all(1))[0] for s in sub]):
            np.testing.assert_array_equal(scores[row], all_scores[qi])
            np.testing.assert_array_equal(ids[row], all_ids[qi])


def test_concurrent_calls_from_python_threads(rng):
    g = K.Gallery.from_rows(rng.standard_normal((4000, 96)), "int8")
    qs = [rng.standard_normal((b, 96)) for b in (1, 3, 8, 40, 1, 16)]
    serial = [g.search(q, 10) for q in qs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda q: g.search(q, 10), qs * 3))
    for (s, i), (ps, pi) in zip(serial * 3, parallel):
        np.testing.assert_array_equal(i, pi)
        np.testing.assert_array_equal(s, ps)


def test_stream_sum(rng):
    a = rng.standard_normal((1000, 77)).astype(np.float32)
    for p in PATHS:
        assert K.stream_sum(a, simd=p) == pytest.approx(float(a.astype(np.float64).sum()), abs=1e-2)


def test_info_reports_the_cpu_class_and_the_int8_gemm_path(monkeypatch):
    from vqclip import _cpus

    i = K.info()
    assert i["cpu_class"] == _cpus.simd_class() and i["int8_gemm"] == _cpus.int8_gemm_path()
    for flags, cls, gemm in [({"avx2", "fma"}, "avx2", "avx2 vpmaddubsw"), ({"avx2", "avx512f"}, "avx512", "avx2"),
                             ({"avx2", "avx512f", "avx512_vnni"}, "avx512-vnni", "vnni (avx512_vnni)"),
                             ({"avx2", "avx_vnni"}, "avx2", "vnni (avx_vnni)")]:
        monkeypatch.setattr(_cpus, "cpu_features", lambda f=flags: frozenset(f))
        assert _cpus.simd_class() == cls and _cpus.int8_gemm_path().startswith(gemm)


def test_info_reports_the_active_path():
    i = K.info()
    assert i["simd"] in i["supported"] and "scalar" in i["supported"]
    assert i["best"] in i["supported"] and i["max_threads"] >= 1


_CHILD = """
import json, numpy as np
from vqclip import kernels as K
rng = np.random.default_rng(7)
g, q = rng.standard_normal((700, 37)), rng.standard_normal((5, 37))
s, i = K.topk_cosine(q, g, 6)
print(json.dumps({"simd": K.info()["simd"], "threads": K.info()["max_threads"], "ids": i.tolist()}))
"""


def _child(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize("simd", PATHS)
def test_environment_variable_forces_each_path(rng, simd):
    out = _child({K.SIMD_ENV: simd, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["simd"] == simd and got["threads"] == 1
    child_rng = np.random.default_rng(7)
    g, q = child_rng.standard_normal((700, 37)), child_rng.standard_normal((5, 37))
    ref = reference(q, g)
    ids = np.array(got["ids"], dtype=np.int64)
    assert_topk(np.take_along_axis(ref, ids, 1).astype(np.float32), ids, ref, 6)


def test_forcing_a_path_the_cpu_lacks_is_one_line(monkeypatch):
    # As on a CPU without AVX-512 (the check itself, on any machine; qemu runs the real one below).
    fake = {**K._ext().info(), "supported": ["scalar", "avx2"]}
    monkeypatch.setattr(K, "_ext", lambda: type("Ext", (), {"info": staticmethod(lambda: fake)}))
    monkeypatch.setenv(K.SIMD_ENV, "avx512")
    K._default_simd.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError) as e:
            K._default_simd()
    finally:
        K._default_simd.cache_clear()
    assert str(e.value) == f"{K.SIMD_ENV}='avx512' is not supported on this CPU/build; supported: scalar, avx2"


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64", reason="needs qemu-x86_64 (Debian qemu-user) on x86-64")
def test_avx512_forced_on_an_emulated_avx2_only_cpu_is_one_line():
    # Haswell: AVX2 + FMA, no AVX-512. The extension must load, pick avx2, and refuse avx512.
    code = ("from vqclip import kernels as K; import numpy as np; print(K._ext().info()['best']); "
            "K.topk_cosine(np.ones((1, 4)), np.ones((3, 4)), 1)")
    env = {**os.environ, K.SIMD_ENV: "avx512", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([QEMU, "-cpu", "Haswell-v4", sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0 and res.stdout.strip() == "avx2", res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last == ("vqclip.errors.BackendUnavailableError: VQCLIP_SIMD='avx512' is not supported on this "
                    "CPU/build; supported: scalar, avx2")


def test_unknown_environment_path_is_a_clear_error():
    out = _child({K.SIMD_ENV: "avx1024"})
    assert out.returncode != 0
    assert "BackendUnavailableError" in out.stderr and "avx1024" in out.stderr


# ----------------------------------------------------------------------- CUDA (optional)


@pytest.mark.skipif(not K.cuda_available(), reason="no CUDA GPU (or vqclip._kernels_cuda not built)")
@pytest.mark.parametrize("b,n,d,k", [(1, 5000, 512, 10), (7, 4099, 66, 100), (33, 100, 31, 120)])
def test_cuda_matches_float64_reference(rng, b, n, d, k):
    g = K.Gallery.from_rows(rng.standard_normal((n, d)), "float16")
    q = rng.standard_normal((b, d)).astype(np.float32)
    scores, ids = K.CudaGallery(g).search(q, k)
    assert_topk(scores, ids, reference(q, dequantised(g)), k)


def test_cuda_gallery_without_gpu_is_a_clear_error():
    if K.cuda_available():
        pytest.skip("a CUDA GPU is present: the error path cannot be reached")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        K.CudaGallery(K.Gallery.from_rows(np.ones((2, 4)), "float16"))
