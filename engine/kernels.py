"""Exact cosine-similarity top-k over embedding galleries, on the fused C++ kernels.

This is the only module that touches the extension ``vqclip._kernels``. It validates
inputs, converts what it documents converting, and keeps galleries in the layout the
kernels read without copying: rows in a storage dtype plus one float32 norm per row
(and one float32 scale per row for int8).

Scores are cosine similarities in float32, sorted descending; ties go to the lower row
id. When k exceeds the gallery size the missing results are id -1 with score -inf (as
FAISS pads). Zero vectors (query or row) score 0, never NaN.

Example::

    >>> g = Gallery.from_rows(np.random.rand(1000, 512).astype(np.float32), dtype="int8")
    >>> scores, ids = g.search(np.random.rand(4, 512), k=10)   # (4, 10) float32, int64

SIMD path: chosen on first use from what the CPU reports (avx512 > avx2 > scalar), or
forced with the environment variable ``VQCLIP_SIMD`` (``avx512``, ``avx2``, ``scalar``);
``info()`` says which is active. Threads: OpenMP, ``threads=`` per call, else
``OMP_NUM_THREADS``, else all cores. Calls release the GIL and are safe from several
Python threads at once.
"""
from __future__ import annotations

import functools
import importlib
import logging
import numbers
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vqclip._cpus import available_cpus, int8_gemm_path, simd_class
from vqclip._validate import check_count, check_k
from vqclip.errors import BackendUnavailableError, InputShapeError

__all__ = [
    "STORAGE_DTYPES",
    "SIMD_ENV",
    "Gallery",
    "encode_rows",
    "topk_cosine",
    "info",
    "stream_sum",
    "resolve_threads",
    "CudaGallery",
    "cuda_available",
]

logger = logging.getLogger(__name__)

#: Storage types a gallery can hold. bfloat16 rows are kept as uint16 bit patterns
#: (numpy has no bfloat16 dtype): the upper half of the float32.
STORAGE_DTYPES = ("float32", "float16", "bfloat16", "int8")
SIMD_ENV = "VQCLIP_SIMD"

_STORAGE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2, "int8": 3}
_NUMPY_DTYPE = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "int8": np.dtype(np.int8),
}
_SIMD_PATHS = ("scalar", "avx2", "avx512")


# ----------------------------------------------------------------------- extension


@functools.lru_cache(maxsize=None)
def _ext() -> Any:
    try:
        return importlib.import_module("vqclip._kernels")
    except ImportError as e:
        raise BackendUnavailableError(
            "the C++ kernels vqclip._kernels are not built; run `pip install -e .` or "
            "`python setup.py build_ext --inplace` in the vqclip checkout"
        ) from e


@functools.lru_cache(maxsize=None)
def _default_simd() -> str:
    """The SIMD path used when a call names none: $VQCLIP_SIMD, else the CPU's best."""
    ext_info = _ext().info()
    forced = os.environ.get(SIMD_ENV, "").strip().lower()
    if not forced:
        return str(ext_info["best"])
    if forced not in _SIMD_PATHS:
        raise BackendUnavailableError(
            f"{SIMD_ENV}={forced!r} is not a SIMD path; expected one of {', '.join(_SIMD_PATHS)}"
        )
    if forced not in ext_info["supported"]:
        raise BackendUnavailableError(
            f"{SIMD_ENV}={forced!r} is not supported on this CPU/build; "
            f"supported: {', '.join(ext_info['supported'])}"
        )
    logger.info("kernels: SIMD path forced to %s by %s", forced, SIMD_ENV)
    return forced


def _resolve_simd(simd: str | None) -> str:
    if simd is None:
        return _default_simd()
    supported = _ext().info()["supported"]
    if simd not in supported:
        raise BackendUnavailableError(
            f"SIMD path {simd!r} is not available here; supported: {', '.join(supported)}"
        )
    return simd


def info() -> dict[str, Any]:
    """What the kernels will run with on this machine.

    Returns a dict: ``simd`` (the active path), ``best`` (what the CPU allows),
    ``compiled`` and ``supported`` (lists of paths), ``openmp`` (bool), ``max_threads``
    (the default thread count, from OMP_NUM_THREADS or the core count), ``cpu_class``
    ("avx512-vnni", "avx512", "avx2", ...) and ``int8_gemm`` (how ONNX Runtime's int8 GEMM
    runs here: VNNI, or AVX2's int16 pair sums; see ``vqclip._cpus.int8_gemm_path``).

    Example: ``info()["simd"]`` -> ``'avx512'``.
    """
    out = dict(_ext().info())
    out["simd"] = _default_simd()
    out["cpu_class"] = simd_class()
    out["int8_gemm"] = int8_gemm_path()
    return out


# ----------------------------------------------------------------------- validation


def resolve_threads(threads: Any = None) -> int:
    """The thread count a kernel call runs with: ``threads``, else ``OMP_NUM_THREADS``, else
    every CPU this process may use.

    Resolved here, not left to OpenMP's default, because torch shares the OpenMP runtime:
    a ``torch.set_num_threads(1)`` anywhere in the process would otherwise make every
    kernel call single-threaded (``tests/test_kernels.py::test_default_threads_ignore_torch_setting``).
    Raises ``InvalidInputError`` for anything but None or an integer >= 1.

    Example: ``resolve_threads(None)`` -> ``2`` on a 2-core machine without OMP_NUM_THREADS.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        return int(env) if env.isdigit() and int(env) >= 1 else available_cpus()
    return check_count(threads, "threads")


def _as_float_matrix(x: Any, what: str) -> np.ndarray:
    """A real-valued 2-D array as C-contiguous float32; a copy only when needed."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputShapeError(
            f"{what} must be 2-D [n, d], got shape {a.shape}; for one vector pass x[None, :]"
        )
    if a.dtype.kind != "f":
        raise InputShapeError(f"{what} must hold floats (float16/32/64), got dtype {a.dtype}")
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        logger.debug("kernels: converting %s %s %s to contiguous float32", what, a.shape, a.dtype)
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def _check_queries(queries: Any, dim: int) -> np.ndarray:
    q = _as_float_matrix(queries, "queries")
    if q.shape[1] != dim:
        raise InputShapeError(f"queries have d={q.shape[1]} but the gallery has d={dim}")
    if not np.isfinite(q).all():
        bad = int(np.argwhere(~np.isfinite(q))[0, 0])
        raise InputShapeError(f"queries contain NaN or inf (first at row {bad}); clean the input")
    return q


def _check_storage(dtype: str) -> str:
    if dtype not in _STORAGE_CODE:
        raise InputShapeError(
            f"storage dtype {dtype!r} is not supported; expected one of {', '.join(STORAGE_DTYPES)}"
        )
    return dtype


def _row_norms(data: np.ndarray, dtype: str, scales: np.ndarray | None) -> np.ndarray:
    """L2 norm of each stored row as float32 [n], accumulated in float64 by the kernels'
    threads; InputShapeError naming the first row whose norm is NaN or inf."""
    norms, bad = _ext().row_norms(data, _STORAGE_CODE[dtype], scales, resolve_threads(None), _default_simd())
    if bad >= 0:
        raise InputShapeError(f"gallery row {bad} contains NaN or inf; clean or re-encode it")
    return norms


def _factors(norms: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Per-row multiplier turning the kernel's raw dot product into a cosine.

    float rows: 1 / norm. int8 rows: scale / norm (the dot runs on the integers).
    Zero rows get 0 so they score 0, never NaN.
    """
    n64 = norms.astype(np.float64)
    num = np.ones_like(n64) if scales is None else scales.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(n64 > 0, num / n64, 0.0)
    return f.astype(np.float32)


# ----------------------------------------------------------------------- encoding


def encode_rows(
    rows: Any, dtype: str = "float32", *, threads: int | None = None, simd: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Encodes float rows [n, D] for a gallery of storage ``dtype``, in one threaded pass.

    Returns ``(data, norms, scales)``: ``data`` [n, D] in the storage dtype (float32 rows
    are the input itself when it is C-contiguous float32, not a copy; bfloat16 as uint16
    bits; float16 and bfloat16 rounded to nearest even); ``norms`` float32 [n], the L2 norm
    of each row as stored (dequantised for int8), accumulated in float64; ``scales``
    float32 [n] for int8 (symmetric, ``row ~= scale * data``, max |value| mapped to 127),
    else None. Zero rows encode to zeros with norm 0. NaN/inf rows, or values beyond
    float16's (bfloat16's) range, raise InputShapeError naming the first bad row.
    ``threads`` and ``simd`` as for ``Gallery.search``; every path gives the same data.

    Example: ``data, norms, scales = encode_rows(x, "int8")``.
    """
    dtype = _check_storage(dtype)
    x = _as_float_matrix(rows, "rows")
    data, norms, scales, nonfinite, overflow = _ext().encode(
        x, _STORAGE_CODE[dtype], resolve_threads(threads), _resolve_simd(simd))
    if nonfinite >= 0:
        raise InputShapeError(f"rows contain NaN or inf (first at row {nonfinite}); clean the input")
    if overflow >= 0:
        limit = np.finfo(np.float16).max if dtype == "float16" else float(np.finfo(np.float32).max)
        raise InputShapeError(
            f"row {overflow} overflows {dtype} (|value| > {limit:.6g}); store this gallery as float32 or int8"
        )
    if dtype == "float16":
        data = data.view(np.float16)  # the binding writes both 16-bit formats as uint16 bits
    return (x if data is None else data), norms, scales


# ----------------------------------------------------------------------- gallery


@dataclass(frozen=True)
class _Segment:
    data: np.ndarray  # (n, D) storage dtype, C-contiguous; possibly a np.memmap
    norms: np.ndarray  # (n,) float32
    scales: np.ndarray | None  # (n,) float32 for int8
    factors: np.ndarray  # (n,) float32, derived: what the kernel multiplies by


class Gallery:
    """A growing set of D-dimensional vectors searched by exact cosine top-k.

    Storage is one of ``STORAGE_DTYPES``. The gallery is a list of segments, each three
    arrays that a caller can persist as they are (e.g. as ``np.memmap`` files):

    - ``data``: [n, D], C-contiguous, dtype float32 / float16 / uint16 (bfloat16 bits) /
      int8;
    - ``norms``: [n] float32, the L2 norm of each row as stored (for int8: of
      ``scale * data``);
    - ``scales``: [n] float32, int8 only: the per-row scale (``row ~= scale * data``).

    ``Gallery.from_arrays(data, norms, scales)`` wraps such arrays without copying them;
    ``append(rows)`` encodes new float rows into a new segment, so rows already stored
    are never copied; ``segments`` returns the arrays to persist. Row ids are global:
    segment by segment in order. Searches see a consistent snapshot even while another
    thread appends.

    Example::

        >>> g = Gallery(512, "float16")
        >>> g.append(np.random.rand(100, 512))      # ids 0..99
        >>> scores, ids = g.search(np.random.rand(2, 512), k=5)
    """

    def __init__(self, dim: int, dtype: str = "float32") -> None:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise InputShapeError(f"dim must be an integer >= 1, got {dim!r}")
        self._dim = int(dim)
        self._dtype = _check_storage(dtype)
        self._segments: tuple[_Segment, ...] = ()

    # -- construction

    @classmethod
    def from_rows(cls, rows: Any, dtype: str = "float32") -> Gallery:
        """A gallery holding ``rows`` [n, D] (any float dtype), encoded to ``dtype`` (see
        ``encode_rows``: C-contiguous float32 rows are kept, not copied)."""
        x = _as_float_matrix(rows, "rows")
        g = cls(x.shape[1], dtype)
        g.append(x)
        return g

    @classmethod
    def from_arrays(
        cls,
        data: np.ndarray,
        norms: np.ndarray | None = None,
        scales: np.ndarray | None = None,
        *,
        dtype: str | None = None,
    ) -> Gallery:
        """Wraps stored arrays (see the class docstring) without copying ``data``.

        ``dtype`` defaults from ``data.dtype`` (float32, float16, int8); uint16 data needs
        ``dtype="bfloat16"``. ``norms`` None computes them (one pass over ``data``);
        ``scales`` is required for int8 and refused otherwise. Non-contiguous data is
        refused rather than silently copied.
        """
        g_dtype = _infer_dtype(data, dtype)
        data = np.asarray(data) if not isinstance(data, np.ndarray) else data
        if data.ndim != 2 or data.shape[1] < 1:
            raise InputShapeError(f"gallery data must be 2-D [n, d>=1], got shape {data.shape}")
        g = cls(data.shape[1], g_dtype)
        g.append_encoded(data, norms, scales)
        return g

    # -- growth

    def append(self, rows: Any) -> range:
        """Encodes float rows [m, D] and adds them; returns their ids."""
        x = _as_float_matrix(rows, "rows")
        if x.shape[1] != self._dim:
            raise InputShapeError(f"rows have d={x.shape[1]} but the gallery has d={self._dim}")
        data, norms, scales = encode_rows(x, self._dtype)
        return self._add(data, norms, scales)

    def append_encoded(
        self, data: np.ndarray, norms: np.ndarray | None = None, scales: np.ndarray | None = None
    ) -> range:
        """Adds already-encoded arrays as a new segment without copying them; returns their ids."""
        if not isinstance(data, np.ndarray):
            raise InputShapeError(f"data must be a numpy array, got {type(data).__name__}")
        want = _NUMPY_DTYPE[self._dtype]
        if data.dtype != want:
            raise InputShapeError(f"data has dtype {data.dtype}; a {self._dtype} gallery needs {want}")
        if data.ndim != 2 or data.shape[1] != self._dim:
            raise InputShapeError(f"data has shape {data.shape}; expected [n, {self._dim}]")
        if not data.flags.c_contiguous:
            raise InputShapeError(
                "gallery data must be C-contiguous (it is read in place); "
                "pass np.ascontiguousarray(data)"
            )
        n = data.shape[0]
        if self._dtype == "int8":
            if scales is None:
                raise InputShapeError("an int8 gallery needs scales [n] float32 (see encode_rows)")
            scales = _check_vector(scales, n, "scales")
            if not np.isfinite(scales).all():
                raise InputShapeError("scales contain NaN or inf; re-encode the rows")
        elif scales is not None:
            raise InputShapeError(f"scales are only for int8 galleries, not {self._dtype}")
        if norms is None:
            norms = _row_norms(data, self._dtype, scales)
        else:
            norms = _check_vector(norms, n, "norms")
            bad = np.flatnonzero(~np.isfinite(norms))
            if len(bad):
                raise InputShapeError(f"gallery row {int(bad[0])} contains NaN or inf; clean or re-encode it")
        return self._add(data, norms, scales)

    def _add(self, data: np.ndarray, norms: np.ndarray, scales: np.ndarray | None) -> range:
        first = len(self)
        seg = _Segment(data, norms, scales, _factors(norms, scales))
        # A new tuple, never a mutation: a concurrent search keeps the snapshot it took.
        self._segments = self._segments + (seg,)
        return range(first, first + data.shape[0])

    def compact(self) -> None:
        """Merges all segments into one in-memory segment (one copy; speeds up many tiny appends)."""
        segs = self._segments
        if len(segs) <= 1:
            return
        data = np.concatenate([s.data for s in segs])
        norms = np.concatenate([s.norms for s in segs])
        scales = None if segs[0].scales is None else np.concatenate([s.scales for s in segs])
        self._segments = (_Segment(data, norms, scales, _factors(norms, scales)),)

    # -- access

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        return sum(s.data.shape[0] for s in self._segments)

    @property
    def segments(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(data, norms, scales)`` per segment, in id order: the arrays to persist."""
        return [(s.data, s.norms, s.scales) for s in self._segments]

    def __repr__(self) -> str:
        return f"Gallery(n={len(self)}, dim={self._dim}, dtype={self._dtype!r}, segments={len(self._segments)})"

    # -- search

    def search(
        self,
        queries: Any,
        k: int,
        *,
        rescore: int | None = None,
        exact: np.ndarray | None = None,
        threads: int | None = None,
        simd: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine of each query against the gallery.

        Args:
            queries: [B, D] floats (float16/64 and non-contiguous input are converted to
                float32 once). Need not be normalised; a zero query scores 0 everywhere.
            k: results per query, >= 1. When k > len(gallery) the tail is padded with
                id -1 and score -inf. An empty gallery gives an all-padded result.
            rescore: for float16/bfloat16/int8 storage, fetch the best ``k * rescore``
                candidates from the kernel, then re-rank them exactly (float64) against
                ``exact``, the float32 rows [N, D] the caller kept (a memmap is fine:
                only the candidate rows are read).
            threads: OpenMP threads for this call; None: ``resolve_threads`` (OMP_NUM_THREADS,
                else every CPU this process may use, whatever torch set).
            simd: force a SIMD path ("avx512", "avx2", "scalar"); None uses ``info()["simd"]``.

        Returns:
            ``(scores, ids)``: float32 [B, k] sorted descending, int64 [B, k]; ties in
            score go to the lower id.

        Example: ``scores, ids = gallery.search(q, 10, rescore=4, exact=rows_f32)``.
        """
        k = check_k(k)
        q = _check_queries(queries, self._dim)
        nthreads = resolve_threads(threads)
        path = _resolve_simd(simd)
        segs = self._segments  # snapshot
        if rescore is None:
            if exact is not None:
                raise InputShapeError("exact rows were given without rescore=; pass rescore=r (e.g. 4)")
            return _run(q, segs, self._dtype, k, nthreads, path)
        if isinstance(rescore, bool) or not isinstance(rescore, numbers.Integral) or rescore < 1:
            raise InputShapeError(f"rescore must be an integer >= 1, got {rescore!r}")
        n = sum(s.data.shape[0] for s in segs)
        if exact is None:
            raise InputShapeError("rescore needs exact=, the float32 rows [N, D] kept beside the gallery")
        exact = np.asarray(exact) if not isinstance(exact, np.ndarray) else exact
        if exact.ndim != 2 or exact.shape != (n, self._dim) or exact.dtype.kind != "f":
            raise InputShapeError(
                f"exact rows must be float [{n}, {self._dim}] (the gallery's rows), "
                f"got {exact.dtype} {exact.shape}"
            )
        if n == 0:  # nothing to re-rank: the kernel's all-padding answer
            return _run(q, segs, self._dtype, k, nthreads, path)
        _, cand = _run(q, segs, self._dtype, min(k * int(rescore), n), nthreads, path)
        return _rescore(q, cand, exact, k)


def _infer_dtype(data: Any, dtype: str | None) -> str:
    if dtype is not None:
        return _check_storage(dtype)
    kind = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int8): "int8"}
    dt = getattr(data, "dtype", None)
    if dt in kind:
        return kind[dt]
    if dt == np.dtype(np.uint16):
        raise InputShapeError("uint16 gallery data is ambiguous; pass dtype='bfloat16' if it holds bfloat16 bits")
    raise InputShapeError(
        f"gallery data dtype {dt} is not a storage type; expected float32, float16, int8 "
        "or uint16 with dtype='bfloat16' (use encode_rows to convert)"
    )


def _check_vector(v: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(v)
    if a.shape != (n,):
        raise InputShapeError(f"{what} must have shape ({n},), got {a.shape}")
    if a.dtype.kind != "f":
        raise InputShapeError(f"{what} must be float32, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _run(
    q: np.ndarray, segs: Sequence[_Segment], dtype: str, k: int, threads: int, simd: str
) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(s.data, s.factors) for s in segs]
    scores, ids, _ = _ext().topk(q, pairs, _STORAGE_CODE[dtype], k, threads, simd)
    return scores, ids


def _rescore(q: np.ndarray, cand: np.ndarray, exact: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranks candidate ids [B, c] by exact float64 cosine; keeps the best k."""
    b, c = cand.shape
    valid = cand >= 0  # (B, c)
    rows = exact[np.where(valid, cand, 0).ravel()].astype(np.float64).reshape(b, c, -1)  # (B, c, D)
    qn = q.astype(np.float64)
    qnorm = np.linalg.norm(qn, axis=1, keepdims=True)  # (B, 1)
    qn = np.divide(qn, qnorm, out=np.zeros_like(qn), where=qnorm > 0)
    rnorm = np.linalg.norm(rows, axis=2)  # (B, c)
    dots = np.einsum("bd,bcd->bc", qn, rows)
    cos = np.divide(dots, rnorm, out=np.zeros_like(dots), where=rnorm > 0)
    cos = np.where(valid, cos, -np.inf)
    ids_key = np.where(valid, cand, np.iinfo(np.int64).max)
    scores = np.full((b, k), -np.inf, dtype=np.float32)
    ids = np.full((b, k), -1, dtype=np.int64)
    for i in range(b):
        order = np.lexsort((ids_key[i], -cos[i]))[: min(k, c)]  # score desc, then id asc
        keep = order[valid[i, order]]
        scores[i, : len(keep)] = cos[i, keep]
        ids[i, : len(keep)] = cand[i, keep]
    return scores, ids


# ----------------------------------------------------------------------- one-shot


def topk_cosine(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    threads: int | None = None,
    simd: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine of queries [B, D] against a gallery [N, D] of raw float rows, in one pass.

    The rows need not be normalised: the kernel accumulates each row's squared norm in the
    same pass as its dot products, so the gallery is read once, as a search of a prebuilt
    ``Gallery`` reads it (build one for repeated searches: it also keeps int8/float16
    copies). float16 galleries are searched as float16; other float dtypes (and
    non-contiguous input) are converted to float32 once. A gallery row holding NaN or inf
    raises InputShapeError naming the first such row. Edge cases, dtypes and the return
    value are as for ``Gallery.search``; scores match it within 1e-5 (the norms are
    summed in float32 here, rows with out-of-range norms in float64).

    Example: ``scores, ids = topk_cosine(q, g, 10)`` -> float32 [B, 10], int64 [B, 10].
    """
    k = check_k(k)
    g = np.asarray(gallery)
    if g.ndim != 2 or g.shape[1] < 1:
        raise InputShapeError(f"gallery must be 2-D [n, d>=1], got shape {g.shape}")
    if g.dtype.kind != "f":
        raise InputShapeError(f"gallery must hold floats, got dtype {g.dtype}")
    dtype = "float16" if g.dtype == np.float16 and g.flags.c_contiguous else "float32"
    if dtype == "float32":
        g = _as_float_matrix(g, "gallery")
    q = _check_queries(queries, g.shape[1])
    nthreads, path = resolve_threads(threads), _resolve_simd(simd)
    scores, ids, bad = _ext().topk(q, [(g, None)], _STORAGE_CODE[dtype], k, nthreads, path)
    if q.shape[0] == 0:  # nothing was scanned; the gallery is still checked, as a search would
        _row_norms(g, dtype, None)
    elif bad >= 0:
        raise InputShapeError(f"gallery row {bad} contains NaN or inf; clean or re-encode it")
    return scores, ids


def stream_sum(array: np.ndarray, *, threads: int | None = None, simd: str | None = None) -> float:
    """Sums a C-contiguous float32 array with the kernels' threads and SIMD path.

    A read-bandwidth probe for benchmarks: the speed a kernel reading the same bytes
    cannot beat. Example: ``stream_sum(np.ones((1024, 512), np.float32))`` -> 524288.0.
    """
    a = np.asarray(array)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise InputShapeError(f"stream_sum needs a C-contiguous float32 array, got {a.dtype}")
    return float(_ext().stream_sum(a, resolve_threads(threads), _resolve_simd(simd)))


# ----------------------------------------------------------------------- CUDA (optional)


@functools.lru_cache(maxsize=None)
def _cuda_ext() -> Any:
    try:
        return importlib.import_module("vqclip._kernels_cuda")
    except ImportError as e:
        raise BackendUnavailableError(
            "the CUDA kernels vqclip._kernels_cuda are not built; rebuild with "
            "VQCLIP_BUILD_CUDA=1 on a machine with a CUDA toolkit"
        ) from e


def cuda_available() -> bool:
    """True when the CUDA extension is built and sees at least one GPU."""
    try:
        return _cuda_ext().device_count() > 0
    except BackendUnavailableError:
        return False


class CudaGallery:
    """A float16 gallery copied to the GPU once and searched there (NOT YET RUN ON A GPU).

    Same contract as ``Gallery.search`` (cosine, sorted, ties to the lower id, padding
    with -1/-inf), for k in 1..1024. Built from a float16 ``Gallery``; its segments are
    joined on the host once for the upload.

    Example: ``CudaGallery(Gallery.from_rows(x, "float16")).search(q, 10)``.
    """

    def __init__(self, gallery: Gallery) -> None:
        if not isinstance(gallery, Gallery) or gallery.dtype != "float16":
            raise InputShapeError("CudaGallery needs a float16 Gallery (Gallery.from_rows(x, 'float16'))")
        ext = _cuda_ext()
        if ext.device_count() < 1:
            raise BackendUnavailableError("no CUDA GPU is visible; use Gallery.search on the CPU")
        segs = gallery._segments
        if segs:
            data = np.concatenate([s.data for s in segs]) if len(segs) > 1 else segs[0].data
            factors = np.concatenate([s.factors for s in segs])
        else:
            data, factors = np.zeros((0, gallery.dim), np.float16), np.zeros(0, np.float32)
        self._dim = gallery.dim
        self._impl = ext.CudaGallery(np.ascontiguousarray(data), np.ascontiguousarray(factors))

    def __len__(self) -> int:
        return int(self._impl.size)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cosine on the GPU: float32 [B, k] scores, int64 [B, k] ids."""
        k = check_k(k)
        if k > 1024:
            raise InputShapeError(f"k={k} exceeds the CUDA path's limit of 1024; use Gallery.search")
        q = _check_queries(queries, self._dim)
        return self._impl.search(q, k)
