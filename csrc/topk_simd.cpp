// The arithmetic of the top-k kernels, once per instruction set.
//
// All variants live in this one translation unit, compiled for the baseline target; the
// AVX2 and AVX-512 functions carry __attribute__((target(...))) so that one binary holds
// every variant and topk.cpp picks one at run time from what the CPU reports. Building
// the whole module with -march=native would crash the wheel on older CPUs.
//
// Each kernel has the same shape: a SIMD body, a tail (masked on AVX-512, zero-padded on
// AVX2), and the complete scalar fallback below, which the tests also run.
//
// Summation orders. The tile (many-query) kernels of AVX2 and AVX-512 compute each
// query . row product as one sequential FMA chain over d (GEMM form, one accumulator lane
// per pair); the scalar tile kernel and the direct (few-query) kernels use partial sums
// and a fixed lane tree. Which kernel runs depends only on the batch size and the path,
// so for a given batch a score is bit-identical whatever the tile position, block,
// segment or thread split: results do not depend on threads or on how the gallery was
// appended. (B = 1 and B = 8 may differ in the last bits: both are within 1e-5 of float64,
// the documented accuracy.)
#include "simd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>

namespace vq {
namespace {

using namespace detail;

// ---------------------------------------------------------------- scalar variant

template <typename T>
float dot_scalar(const float* __restrict q, const T* __restrict row, int64_t d) {
    // Eight partial sums so the compiler may vectorise without reassociation flags.
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int u = 0; u < 8; ++u) acc[u] += q[j + u] * to_f32(row[j + u]);
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < d; ++j) s += q[j] * to_f32(row[j]);
    return s;
}

template <typename T>
void dot_rows_scalar_t(const float* q, const T* rows, int64_t nrows, int64_t d, float* scores) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot_scalar(q, rows + r * d, d);
}

void dot_rows_scalar(const float* q, const void* rows, Storage st, int64_t nrows, int64_t d,
                     float* scores) {
    switch (st) {
        case Storage::f32: return dot_rows_scalar_t(q, static_cast<const float*>(rows), nrows, d, scores);
        case Storage::f16: return dot_rows_scalar_t(q, static_cast<const h16*>(rows), nrows, d, scores);
        case Storage::bf16: return dot_rows_scalar_t(q, static_cast<const b16*>(rows), nrows, d, scores);
        case Storage::i8: return dot_rows_scalar_t(q, static_cast<const int8_t*>(rows), nrows, d, scores);
    }
}

// dot_scalar's dot product, and the row's sum of squares in the same pass.
template <typename T>
float dot_norm_scalar(const float* __restrict q, const T* __restrict row, int64_t d, float* ss) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sq[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int u = 0; u < 8; ++u) {
            const float v = to_f32(row[j + u]);
            acc[u] += q[j + u] * v;
            sq[u] += v * v;
        }
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    float n = ((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7]));
    for (; j < d; ++j) {
        const float v = to_f32(row[j]);
        s += q[j] * v;
        n += v * v;
    }
    *ss = n;
    return s;
}

// dot_norm_scalar's sum of squares alone (the same summation, so the same bits).
template <typename T>
float sumsq_scalar(const T* __restrict row, int64_t d) {
    float sq[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= d; j += 8)
        for (int u = 0; u < 8; ++u) {
            const float v = to_f32(row[j + u]);
            sq[u] += v * v;
        }
    float n = ((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7]));
    for (; j < d; ++j) {
        const float v = to_f32(row[j]);
        n += v * v;
    }
    return n;
}

template <typename T>
int64_t dot_norm_rows_scalar_t(const float* q, const T* rows, int64_t nrows, int64_t d, float* scores,
                               float* factor) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot_norm_scalar(q, rows + r * d, d, factor + r);
    return factors_from_sumsq(factor, nrows);
}

template <typename T>
int64_t norm_factors_scalar_t(const T* rows, int64_t nrows, int64_t d, float* factor) {
    for (int64_t r = 0; r < nrows; ++r) factor[r] = sumsq_scalar(rows + r * d, d);
    return factors_from_sumsq(factor, nrows);
}

int64_t dot_norm_rows_scalar(const float* q, const void* rows, Storage st, int64_t nrows, int64_t d,
                             float* scores, float* factor) {
    switch (st) {
        case Storage::f32: return dot_norm_rows_scalar_t(q, static_cast<const float*>(rows), nrows, d, scores, factor);
        case Storage::f16: return dot_norm_rows_scalar_t(q, static_cast<const h16*>(rows), nrows, d, scores, factor);
        case Storage::bf16: return dot_norm_rows_scalar_t(q, static_cast<const b16*>(rows), nrows, d, scores, factor);
        case Storage::i8: return dot_norm_rows_scalar_t(q, static_cast<const int8_t*>(rows), nrows, d, scores, factor);
    }
    return 0;
}

int64_t norm_factors_scalar(const void* rows, Storage st, int64_t nrows, int64_t d, float* factor) {
    switch (st) {
        case Storage::f32: return norm_factors_scalar_t(static_cast<const float*>(rows), nrows, d, factor);
        case Storage::f16: return norm_factors_scalar_t(static_cast<const h16*>(rows), nrows, d, factor);
        case Storage::bf16: return norm_factors_scalar_t(static_cast<const b16*>(rows), nrows, d, factor);
        case Storage::i8: return norm_factors_scalar_t(static_cast<const int8_t*>(rows), nrows, d, factor);
    }
    return 0;
}

template <typename T>
void convert_scalar_t(const T* src, int64_t n, float* dst) {
    for (int64_t j = 0; j < n; ++j) dst[j] = to_f32(src[j]);
}

void convert_rows_scalar(const void* rows, Storage st, int64_t nrows, int64_t d, float* dst) {
    const int64_t n = nrows * d;
    switch (st) {
        case Storage::f32: std::memcpy(dst, rows, sizeof(float) * n); return;
        case Storage::f16: return convert_scalar_t(static_cast<const h16*>(rows), n, dst);
        case Storage::bf16: return convert_scalar_t(static_cast<const b16*>(rows), n, dst);
        case Storage::i8: return convert_scalar_t(static_cast<const int8_t*>(rows), n, dst);
    }
}

void tile_scores_scalar(const float* q, int64_t nq, const float* g, int64_t ng, int64_t d,
                        float* scores, int64_t lds, const void*, int64_t) {
    for (int64_t i = 0; i < nq; ++i) dot_rows_scalar_t(q + i * d, g, ng, d, scores + i * lds);
}

int64_t scale_filter_scalar(float* scores, const float* factor, int64_t n, float thr,
                            int32_t* idx) {
    int64_t cnt = 0;
    for (int64_t r = 0; r < n; ++r) {
        const float s = scores[r] * factor[r];
        scores[r] = s;
        if (s >= thr) idx[cnt++] = static_cast<int32_t>(r);
    }
    return cnt;
}

double sum_scalar(const float* p, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int u = 0; u < 8; ++u) acc[u] += p[j + u];
    double s = 0;
    for (float a : acc) s += a;
    for (; j < n; ++j) s += p[j];
    return s;
}

// Plain layouts (panel 1): the queries as given, the rows row-major.
void pack_queries_plain(const float* q, int64_t nq, int64_t d, float* dst) {
    std::memcpy(dst, q, sizeof(float) * static_cast<size_t>(nq * d));
}

// The GEMM-form kernels split nq queries into ceil(nq / NR) tiles of near-equal size
// (16 -> 8 + 8 rather than 12 + 4: a narrow tile has too few FMA chains to hide the FMA
// latency; benchmarks/RESULTS.md).
// Tile t holds queries [query_tile_start(t), query_tile_start(t + 1)).
inline int64_t query_tiles(int64_t nq, int64_t nr_max) { return (nq + nr_max - 1) / nr_max; }
inline int64_t query_tile_start(int64_t t, int64_t nq, int64_t tiles) { return nq * t / tiles; }

// Query tiles for the GEMM-form kernels: the tile of queries [n0, n0 + nr) starts at
// dst + n0 * d and holds [d][nr], so the nr values one FMA step broadcasts sit side by side.
template <int64_t NR>
void pack_queries_tiles(const float* q, int64_t nq, int64_t d, float* dst) {
    const int64_t tiles = query_tiles(nq, NR);
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t n0 = query_tile_start(t, nq, tiles);
        const int64_t nr = query_tile_start(t + 1, nq, tiles) - n0;
        float* out = dst + n0 * d;
        for (int64_t n = 0; n < nr; ++n)
            for (int64_t j = 0; j < d; ++j) out[j * nr + n] = q[(n0 + n) * d + j];
    }
}

// One micro-kernel call: 16 packed rows (one panel) x NR packed queries, scores for the
// first `rows` of the panel; it also prefetches `pf_lines` cache lines from `pf`.
using PanelKernel = void (*)(const float* qt, const float* panel, int64_t d, float* scores,
                             int64_t lds, int64_t rows, const char* pf, int64_t pf_lines);

// Runs the GEMM-form micro-kernels (kernels[nr - 1] for a tile of nr queries) over all
// query tiles x 16-row panels. The next block (`ahead`) is prefetched a share per call,
// spread over the call's FMAs, so that its DRAM reads overlap this block's arithmetic.
template <size_t NR>
void run_panel_kernels(const std::array<PanelKernel, NR>& kernels, const float* qp, int64_t nq,
                       const float* gp, int64_t ng, int64_t d, float* scores, int64_t lds,
                       const void* ahead, int64_t ahead_bytes) {
    constexpr int64_t kRows = 16, kQ = static_cast<int64_t>(NR);
    const char* pf = static_cast<const char*>(ahead);
    int64_t pf_left = ahead ? (ahead_bytes + 63) / 64 : 0;
    const int64_t calls = query_tiles(nq, kQ) * ((ng + kRows - 1) / kRows);
    const int64_t per_call = std::max<int64_t>((d + 15) / 16, (pf_left + calls - 1) / calls);
    const int64_t tiles = query_tiles(nq, kQ);
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t n0 = query_tile_start(t, nq, tiles);
        const PanelKernel kernel = kernels[static_cast<size_t>(query_tile_start(t + 1, nq, tiles) - n0 - 1)];
        for (int64_t r0 = 0; r0 < ng; r0 += kRows) {
            const int64_t lines = std::min(pf_left, per_call);
            kernel(qp + n0 * d, gp + r0 * d, d, scores + n0 * lds + r0, lds, std::min(kRows, ng - r0), pf,
                   lines);
            pf += 64 * lines;
            pf_left -= lines;
        }
    }
}

// Edges of a panel pack, element by element: rows [0, nr) of src, elements [j0, d); the
// rows past nr are zero.
template <typename T>
void pack_panel_edge(const T* src, int64_t nr, int64_t d, int64_t j0, float* out) {
    for (; j0 < d; ++j0)
        for (int64_t i = 0; i < 16; ++i) out[j0 * 16 + i] = i < nr ? to_f32(src[i * d + j0]) : 0.0f;
}

const SimdOps kScalar = {"scalar", dot_rows_scalar, 1, convert_rows_scalar, pack_queries_plain,
                         tile_scores_scalar, scale_filter_scalar, sum_scalar, dot_norm_rows_scalar,
                         norm_factors_scalar};

#ifdef VQ_X86
// ---------------------------------------------------------------- AVX2 + FMA + F16C

// Sum of the 8 lanes in a fixed order.
VQ_AVX2 inline float tree_sum8(__m256 v) {
    alignas(32) float x[8];
    _mm256_store_ps(x, v);
    return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

// The direct (few-query) path: one row at a time, four FMA chains (see dot4_avx512
// for why rows are not interleaved).
template <typename T>
VQ_AVX2 float dot4_avx2(const float* __restrict q, const T* __restrict row, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), ld8(row + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), ld8(row + j + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 16), ld8(row + j + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 24), ld8(row + j + 24), a3);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), ld8(row + j), a0);
    if (j < d) a1 = _mm256_fmadd_ps(ld8_tail(q + j, d - j), ld8_tail(row + j, d - j), a1);
    return tree_sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

template <typename T>
VQ_AVX2 void dot_rows_avx2_t(const float* q, const T* rows, int64_t nrows, int64_t d, float* scores) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot4_avx2(q, rows + r * d, d);
}

VQ_AVX2 void dot_rows_avx2(const float* q, const void* rows, Storage st, int64_t nrows, int64_t d,
                           float* scores) {
    switch (st) {
        case Storage::f32: return dot_rows_avx2_t(q, static_cast<const float*>(rows), nrows, d, scores);
        case Storage::f16: return dot_rows_avx2_t(q, static_cast<const h16*>(rows), nrows, d, scores);
        case Storage::bf16: return dot_rows_avx2_t(q, static_cast<const b16*>(rows), nrows, d, scores);
        case Storage::i8: return dot_rows_avx2_t(q, static_cast<const int8_t*>(rows), nrows, d, scores);
    }
}

// dot4_avx2's dot product (the same FMA chains), and the row's sum of squares in four more.
template <typename T>
VQ_AVX2 float dot_norm4_avx2(const float* __restrict q, const T* __restrict row, int64_t d, float* ss) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        const __m256 v0 = ld8(row + j), v1 = ld8(row + j + 8), v2 = ld8(row + j + 16), v3 = ld8(row + j + 24);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), v0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), v1, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 16), v2, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 24), v3, a3);
        s0 = _mm256_fmadd_ps(v0, v0, s0);
        s1 = _mm256_fmadd_ps(v1, v1, s1);
        s2 = _mm256_fmadd_ps(v2, v2, s2);
        s3 = _mm256_fmadd_ps(v3, v3, s3);
    }
    for (; j + 8 <= d; j += 8) {
        const __m256 v = ld8(row + j);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), v, a0);
        s0 = _mm256_fmadd_ps(v, v, s0);
    }
    if (j < d) {
        const __m256 v = ld8_tail(row + j, d - j);
        a1 = _mm256_fmadd_ps(ld8_tail(q + j, d - j), v, a1);
        s1 = _mm256_fmadd_ps(v, v, s1);
    }
    *ss = tree_sum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return tree_sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

// dot_norm4_avx2's sum of squares alone (the same chains, so the same bits).
template <typename T>
VQ_AVX2 float sumsq4_avx2(const T* __restrict row, int64_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        const __m256 v0 = ld8(row + j), v1 = ld8(row + j + 8), v2 = ld8(row + j + 16), v3 = ld8(row + j + 24);
        s0 = _mm256_fmadd_ps(v0, v0, s0);
        s1 = _mm256_fmadd_ps(v1, v1, s1);
        s2 = _mm256_fmadd_ps(v2, v2, s2);
        s3 = _mm256_fmadd_ps(v3, v3, s3);
    }
    for (; j + 8 <= d; j += 8) {
        const __m256 v = ld8(row + j);
        s0 = _mm256_fmadd_ps(v, v, s0);
    }
    if (j < d) {
        const __m256 v = ld8_tail(row + j, d - j);
        s1 = _mm256_fmadd_ps(v, v, s1);
    }
    return tree_sum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

template <typename T>
VQ_AVX2 int64_t dot_norm_rows_avx2_t(const float* q, const T* rows, int64_t nrows, int64_t d, float* scores,
                                     float* factor) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot_norm4_avx2(q, rows + r * d, d, factor + r);
    return factors_from_sumsq(factor, nrows);
}

template <typename T>
VQ_AVX2 int64_t norm_factors_avx2_t(const T* rows, int64_t nrows, int64_t d, float* factor) {
    for (int64_t r = 0; r < nrows; ++r) factor[r] = sumsq4_avx2(rows + r * d, d);
    return factors_from_sumsq(factor, nrows);
}

VQ_AVX2 int64_t dot_norm_rows_avx2(const float* q, const void* rows, Storage st, int64_t nrows, int64_t d,
                                   float* scores, float* factor) {
    switch (st) {
        case Storage::f32: return dot_norm_rows_avx2_t(q, static_cast<const float*>(rows), nrows, d, scores, factor);
        case Storage::f16: return dot_norm_rows_avx2_t(q, static_cast<const h16*>(rows), nrows, d, scores, factor);
        case Storage::bf16: return dot_norm_rows_avx2_t(q, static_cast<const b16*>(rows), nrows, d, scores, factor);
        case Storage::i8: return dot_norm_rows_avx2_t(q, static_cast<const int8_t*>(rows), nrows, d, scores, factor);
    }
    return 0;
}

VQ_AVX2 int64_t norm_factors_avx2(const void* rows, Storage st, int64_t nrows, int64_t d, float* factor) {
    switch (st) {
        case Storage::f32: return norm_factors_avx2_t(static_cast<const float*>(rows), nrows, d, factor);
        case Storage::f16: return norm_factors_avx2_t(static_cast<const h16*>(rows), nrows, d, factor);
        case Storage::bf16: return norm_factors_avx2_t(static_cast<const b16*>(rows), nrows, d, factor);
        case Storage::i8: return norm_factors_avx2_t(static_cast<const int8_t*>(rows), nrows, d, factor);
    }
    return 0;
}

// v[i] lane j -> v[j] lane i, for an 8 x 8 block of floats.
VQ_AVX2 inline __attribute__((always_inline)) void transpose8(__m256* v) {
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // pairs of rows interleaved within 128-bit halves
        t[2 * k] = _mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]);
    }
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {  // u[4k + c], half H: rows 4k..4k+3 of column 4H + c
        u[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
        u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
        u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
        u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
        v[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        v[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

// Converts and packs rows into panels of 16 (see SimdOps::pack_rows): whole 8 x 8 blocks
// through registers, the edges element by element.
template <typename T>
VQ_AVX2 void pack_rows_avx2_t(const T* rows, int64_t nrows, int64_t d, float* dst) {
    const int64_t dv = d & ~int64_t(7);
    for (int64_t p0 = 0; p0 < nrows; p0 += 16) {
        const int64_t nr = nrows - p0 < 16 ? nrows - p0 : 16;
        const T* src = rows + p0 * d;
        float* out = dst + p0 * d;
        int64_t j0 = 0;
        if (nr == 16) {
            for (; j0 < dv; j0 += 8) {
#pragma GCC unroll 2
                for (int h = 0; h < 2; ++h) {  // rows 8h .. 8h+7
                    __m256 v[8];
#pragma GCC unroll 8
                    for (int i = 0; i < 8; ++i) v[i] = ld8(src + (8 * h + i) * d + j0);
                    transpose8(v);
#pragma GCC unroll 8
                    for (int i = 0; i < 8; ++i) _mm256_store_ps(out + (j0 + i) * 16 + 8 * h, v[i]);
                }
            }
        }
        pack_panel_edge(src, nr, d, j0, out);
    }
}

VQ_AVX2 void pack_rows_avx2(const void* rows, Storage st, int64_t nrows, int64_t d, float* dst) {
    switch (st) {
        case Storage::f32: return pack_rows_avx2_t(static_cast<const float*>(rows), nrows, d, dst);
        case Storage::f16: return pack_rows_avx2_t(static_cast<const h16*>(rows), nrows, d, dst);
        case Storage::bf16: return pack_rows_avx2_t(static_cast<const b16*>(rows), nrows, d, dst);
        case Storage::i8: return pack_rows_avx2_t(static_cast<const int8_t*>(rows), nrows, d, dst);
    }
}

// The GEMM-form micro-kernel (see the AVX-512 one): 16 rows as two 8-lane halves x NR
// queries, 2 * NR accumulators + 2 panel loads + 1 broadcast within AVX2's 16 registers.
constexpr int kTileQAvx2 = 6;

template <int NR>
VQ_AVX2 void tile16_avx2(const float* __restrict qt, const float* __restrict panel, int64_t d,
                         float* __restrict scores, int64_t lds, int64_t rows, const char* pf,
                         int64_t pf_lines) {
    __m256 lo[NR], hi[NR];
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) lo[n] = hi[n] = _mm256_setzero_ps();
    const int64_t chunks = (d + 15) / 16;
    const int64_t pf_step = (pf_lines + chunks - 1) / chunks;  // lines per 16 elements of d
    int64_t line = 0;
    for (int64_t j0 = 0; j0 < d; j0 += 16) {
        for (const int64_t e = line + pf_step < pf_lines ? line + pf_step : pf_lines; line < e; ++line)
            _mm_prefetch(pf + 64 * line, _MM_HINT_T1);
        const int64_t j1 = d - j0 < 16 ? d : j0 + 16;
        for (int64_t j = j0; j < j1; ++j) {
            const __m256 a0 = _mm256_load_ps(panel + j * 16), a1 = _mm256_load_ps(panel + j * 16 + 8);
#pragma GCC unroll 16
            for (int n = 0; n < NR; ++n) {
                const __m256 b = _mm256_broadcast_ss(qt + j * NR + n);
                lo[n] = _mm256_fmadd_ps(a0, b, lo[n]);
                hi[n] = _mm256_fmadd_ps(a1, b, hi[n]);
            }
        }
    }
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) {
        float* out = scores + n * lds;
        if (rows == 16) {
            _mm256_storeu_ps(out, lo[n]);
            _mm256_storeu_ps(out + 8, hi[n]);
        } else {
            alignas(32) float tmp[16];
            _mm256_store_ps(tmp, lo[n]);
            _mm256_store_ps(tmp + 8, hi[n]);
            std::memcpy(out, tmp, sizeof(float) * static_cast<size_t>(rows));
        }
    }
}

template <int... N>
constexpr std::array<PanelKernel, sizeof...(N)> tile16_avx2_table(std::integer_sequence<int, N...>) {
    return {&tile16_avx2<N + 1>...};
}
constexpr auto kTile16Avx2 = tile16_avx2_table(std::make_integer_sequence<int, kTileQAvx2>());

VQ_AVX2 void tile_scores_avx2(const float* qp, int64_t nq, const float* gp, int64_t ng, int64_t d,
                              float* scores, int64_t lds, const void* ahead, int64_t ahead_bytes) {
    run_panel_kernels(kTile16Avx2, qp, nq, gp, ng, d, scores, lds, ahead, ahead_bytes);
}

VQ_AVX2 int64_t scale_filter_avx2(float* scores, const float* factor, int64_t n, float thr,
                                  int32_t* idx) {
    const __m256 t = _mm256_set1_ps(thr);
    int64_t cnt = 0, r = 0;
    for (; r + 8 <= n; r += 8) {
        const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(scores + r), _mm256_loadu_ps(factor + r));
        _mm256_storeu_ps(scores + r, s);
        unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(s, t, _CMP_GE_OQ)));
        while (m) {  // rare once the threshold has risen
            idx[cnt++] = static_cast<int32_t>(r + __builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (; r < n; ++r) {
        const float s = scores[r] * factor[r];
        scores[r] = s;
        if (s >= thr) idx[cnt++] = static_cast<int32_t>(r);
    }
    return cnt;
}

VQ_AVX2 double sum_avx2(const float* p, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + j));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + j + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + j + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + j + 24));
    }
    double s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < n; ++j) s += p[j];
    return s;
}

const SimdOps kAvx2 = {"avx2", dot_rows_avx2, 16, pack_rows_avx2, pack_queries_tiles<kTileQAvx2>,
                       tile_scores_avx2, scale_filter_avx2, sum_avx2, dot_norm_rows_avx2,
                       norm_factors_avx2};

// ---------------------------------------------------------------- AVX-512 (F, BW, DQ, VL)

// Sum of the 16 lanes in a fixed order.
VQ_AVX512 inline float tree_sum16(__m512 v) {
    alignas(64) float x[16];
    _mm512_store_ps(x, v);
    float s[4];
    for (int l = 0; l < 4; ++l) s[l] = (x[4 * l] + x[4 * l + 2]) + (x[4 * l + 1] + x[4 * l + 3]);
    return (s[0] + s[2]) + (s[1] + s[3]);
}

// The direct (few-query) path: one row at a time, four FMA chains over interleaved
// 16-wide pieces. Reading each row front to back keeps the hardware prefetcher on one
// stream (interleaved rows were slower from DRAM: benchmarks/RESULTS.md).
template <typename T>
VQ_AVX512 float dot4_avx512(const float* __restrict q, const T* __restrict row, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), ld16(row + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16), ld16(row + j + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 32), ld16(row + j + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 48), ld16(row + j + 48), a3);
    }
    for (; j + 16 <= d; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), ld16(row + j), a0);
    if (j < d) {
        const __mmask16 m = tail_mask(d - j);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + j), ld16m(row + j, m), a1);
    }
    return tree_sum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

template <typename T>
VQ_AVX512 void dot_rows_avx512_t(const float* q, const T* rows, int64_t nrows, int64_t d,
                                 float* scores) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot4_avx512(q, rows + r * d, d);
}

VQ_AVX512 void dot_rows_avx512(const float* q, const void* rows, Storage st, int64_t nrows,
                               int64_t d, float* scores) {
    switch (st) {
        case Storage::f32: return dot_rows_avx512_t(q, static_cast<const float*>(rows), nrows, d, scores);
        case Storage::f16: return dot_rows_avx512_t(q, static_cast<const h16*>(rows), nrows, d, scores);
        case Storage::bf16: return dot_rows_avx512_t(q, static_cast<const b16*>(rows), nrows, d, scores);
        case Storage::i8: return dot_rows_avx512_t(q, static_cast<const int8_t*>(rows), nrows, d, scores);
    }
}

// dot4_avx512's dot product (the same FMA chains), and the row's sum of squares in four more.
template <typename T>
VQ_AVX512 float dot_norm4_avx512(const float* __restrict q, const T* __restrict row, int64_t d, float* ss) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        const __m512 v0 = ld16(row + j), v1 = ld16(row + j + 16), v2 = ld16(row + j + 32), v3 = ld16(row + j + 48);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), v0, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16), v1, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 32), v2, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 48), v3, a3);
        s0 = _mm512_fmadd_ps(v0, v0, s0);
        s1 = _mm512_fmadd_ps(v1, v1, s1);
        s2 = _mm512_fmadd_ps(v2, v2, s2);
        s3 = _mm512_fmadd_ps(v3, v3, s3);
    }
    for (; j + 16 <= d; j += 16) {
        const __m512 v = ld16(row + j);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), v, a0);
        s0 = _mm512_fmadd_ps(v, v, s0);
    }
    if (j < d) {
        const __mmask16 m = tail_mask(d - j);
        const __m512 v = ld16m(row + j, m);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + j), v, a1);
        s1 = _mm512_fmadd_ps(v, v, s1);
    }
    *ss = tree_sum16(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    return tree_sum16(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// dot_norm4_avx512's sum of squares alone (the same chains, so the same bits).
template <typename T>
VQ_AVX512 float sumsq4_avx512(const T* __restrict row, int64_t d) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        const __m512 v0 = ld16(row + j), v1 = ld16(row + j + 16), v2 = ld16(row + j + 32), v3 = ld16(row + j + 48);
        s0 = _mm512_fmadd_ps(v0, v0, s0);
        s1 = _mm512_fmadd_ps(v1, v1, s1);
        s2 = _mm512_fmadd_ps(v2, v2, s2);
        s3 = _mm512_fmadd_ps(v3, v3, s3);
    }
    for (; j + 16 <= d; j += 16) {
        const __m512 v = ld16(row + j);
        s0 = _mm512_fmadd_ps(v, v, s0);
    }
    if (j < d) {
        const __m512 v = ld16m(row + j, tail_mask(d - j));
        s1 = _mm512_fmadd_ps(v, v, s1);
    }
    return tree_sum16(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

template <typename T>
VQ_AVX512 int64_t dot_norm_rows_avx512_t(const float* q, const T* rows, int64_t nrows, int64_t d,
                                         float* scores, float* factor) {
    for (int64_t r = 0; r < nrows; ++r) scores[r] = dot_norm4_avx512(q, rows + r * d, d, factor + r);
    return factors_from_sumsq(factor, nrows);
}

template <typename T>
VQ_AVX512 int64_t norm_factors_avx512_t(const T* rows, int64_t nrows, int64_t d, float* factor) {
    for (int64_t r = 0; r < nrows; ++r) factor[r] = sumsq4_avx512(rows + r * d, d);
    return factors_from_sumsq(factor, nrows);
}

VQ_AVX512 int64_t dot_norm_rows_avx512(const float* q, const void* rows, Storage st, int64_t nrows,
                                       int64_t d, float* scores, float* factor) {
    switch (st) {
        case Storage::f32: return dot_norm_rows_avx512_t(q, static_cast<const float*>(rows), nrows, d, scores, factor);
        case Storage::f16: return dot_norm_rows_avx512_t(q, static_cast<const h16*>(rows), nrows, d, scores, factor);
        case Storage::bf16: return dot_norm_rows_avx512_t(q, static_cast<const b16*>(rows), nrows, d, scores, factor);
        case Storage::i8: return dot_norm_rows_avx512_t(q, static_cast<const int8_t*>(rows), nrows, d, scores, factor);
    }
    return 0;
}

VQ_AVX512 int64_t norm_factors_avx512(const void* rows, Storage st, int64_t nrows, int64_t d, float* factor) {
    switch (st) {
        case Storage::f32: return norm_factors_avx512_t(static_cast<const float*>(rows), nrows, d, factor);
        case Storage::f16: return norm_factors_avx512_t(static_cast<const h16*>(rows), nrows, d, factor);
        case Storage::bf16: return norm_factors_avx512_t(static_cast<const b16*>(rows), nrows, d, factor);
        case Storage::i8: return norm_factors_avx512_t(static_cast<const int8_t*>(rows), nrows, d, factor);
    }
    return 0;
}

// ---- the GEMM-form tile path (many queries)
//
// A gallery block is packed into panels of 16 rows, [d][16] each, and the queries into
// tiles of kTileQ, [d][kTileQ] each. The micro-kernel keeps 16 rows x kTileQ queries of
// scores in registers: per element j, one vector load of the panel and kTileQ FMAs whose
// broadcast query value folds into the FMA's memory operand. Each accumulator lane is
// one sequential FMA chain over j for one (query, row) pair, so a score does not depend
// on the tile position, the block, the segment or the thread split, and no horizontal
// sums are needed. 16 x 12 is the simplest of the shapes that tied (benchmarks/RESULTS.md).
constexpr int64_t kPanel = 16;
constexpr int kTileQ = 12;

// v[i] lane j -> v[j] lane i, for a 16 x 16 block of floats.
VQ_AVX512 inline __attribute__((always_inline)) void transpose16(__m512* v) {
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {  // pairs of rows interleaved within 128-bit lanes
        t[2 * k] = _mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // u[4k + c], lane L: rows 4k..4k+3 of column 4L + c
        u[4 * k + 0] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
        u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
        u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
        u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {  // 4 x 4 transpose of 128-bit lanes across u[c], u[4+c], ..
        const __m512 y0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        const __m512 y1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        const __m512 y2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        const __m512 y3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        v[c] = _mm512_shuffle_f32x4(y0, y2, 0x88);
        v[4 + c] = _mm512_shuffle_f32x4(y1, y3, 0x88);
        v[8 + c] = _mm512_shuffle_f32x4(y0, y2, 0xDD);
        v[12 + c] = _mm512_shuffle_f32x4(y1, y3, 0xDD);
    }
}

// Converts and packs rows into panels of kPanel (see SimdOps::pack_rows): whole 16 x 16
// blocks through registers, the edges (last panel of a block, d % 16) element by element.
template <typename T>
VQ_AVX512 void pack_rows_avx512_t(const T* rows, int64_t nrows, int64_t d, float* dst) {
    const int64_t dv = d & ~int64_t(15);
    for (int64_t p0 = 0; p0 < nrows; p0 += kPanel) {
        const int64_t nr = nrows - p0 < kPanel ? nrows - p0 : kPanel;
        const T* src = rows + p0 * d;
        float* out = dst + p0 * d;
        int64_t j0 = 0;
        if (nr == kPanel) {
            for (; j0 < dv; j0 += 16) {
                __m512 v[16];
#pragma GCC unroll 16
                for (int i = 0; i < 16; ++i) v[i] = ld16(src + i * d + j0);
                transpose16(v);
#pragma GCC unroll 16
                for (int i = 0; i < 16; ++i) _mm512_store_ps(out + (j0 + i) * kPanel, v[i]);
            }
        }
        pack_panel_edge(src, nr, d, j0, out);
    }
}

VQ_AVX512 void pack_rows_avx512(const void* rows, Storage st, int64_t nrows, int64_t d, float* dst) {
    switch (st) {
        case Storage::f32: return pack_rows_avx512_t(static_cast<const float*>(rows), nrows, d, dst);
        case Storage::f16: return pack_rows_avx512_t(static_cast<const h16*>(rows), nrows, d, dst);
        case Storage::bf16: return pack_rows_avx512_t(static_cast<const b16*>(rows), nrows, d, dst);
        case Storage::i8: return pack_rows_avx512_t(static_cast<const int8_t*>(rows), nrows, d, dst);
    }
}

// One panel (16 rows) x NR queries (a PanelKernel).
template <int NR>
VQ_AVX512 void tile16_avx512(const float* __restrict qt, const float* __restrict panel, int64_t d,
                             float* __restrict scores, int64_t lds, int64_t rows, const char* pf,
                             int64_t pf_lines) {
    __m512 acc[NR];
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) acc[n] = _mm512_setzero_ps();
    const int64_t chunks = (d + 15) / 16;
    const int64_t pf_step = (pf_lines + chunks - 1) / chunks;  // lines per 16 elements of d
    int64_t line = 0;
    for (int64_t j0 = 0; j0 < d; j0 += 16) {
        for (const int64_t e = line + pf_step < pf_lines ? line + pf_step : pf_lines; line < e; ++line)
            _mm_prefetch(pf + 64 * line, _MM_HINT_T1);
        const int64_t j1 = d - j0 < 16 ? d : j0 + 16;
        for (int64_t j = j0; j < j1; ++j) {
            const __m512 a = _mm512_load_ps(panel + j * kPanel);  // (16,) rows at element j
#pragma GCC unroll 16
            for (int n = 0; n < NR; ++n) acc[n] = _mm512_fmadd_ps(a, _mm512_set1_ps(qt[j * NR + n]), acc[n]);
        }
    }
    const __mmask16 valid = tail_mask(rows);
#pragma GCC unroll 16
    for (int n = 0; n < NR; ++n) _mm512_mask_storeu_ps(scores + n * lds, valid, acc[n]);
}

template <int... N>
constexpr std::array<PanelKernel, sizeof...(N)> tile16_avx512_table(std::integer_sequence<int, N...>) {
    return {&tile16_avx512<N + 1>...};
}
constexpr auto kTile16Avx512 = tile16_avx512_table(std::make_integer_sequence<int, kTileQ>());

VQ_AVX512 void tile_scores_avx512(const float* qp, int64_t nq, const float* gp, int64_t ng,
                                  int64_t d, float* scores, int64_t lds, const void* ahead,
                                  int64_t ahead_bytes) {
    run_panel_kernels(kTile16Avx512, qp, nq, gp, ng, d, scores, lds, ahead, ahead_bytes);
}

VQ_AVX512 int64_t scale_filter_avx512(float* scores, const float* factor, int64_t n, float thr,
                                      int32_t* idx) {
    const __m512 t = _mm512_set1_ps(thr);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t cnt = 0, r = 0;
    for (; r < n; r += 16, iota = _mm512_add_epi32(iota, step)) {
        const __mmask16 valid = n - r >= 16 ? __mmask16(0xFFFF) : tail_mask(n - r);
        const __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, scores + r),
                                       _mm512_maskz_loadu_ps(valid, factor + r));
        _mm512_mask_storeu_ps(scores + r, valid, s);
        const __mmask16 m = _mm512_mask_cmp_ps_mask(valid, s, t, _CMP_GE_OQ);
        if (m) {
            // Compress into a register and store whole: a compress straight to memory is
            // microcoded and slow on AMD Zen 4. idx has 16 entries of slack for this.
            _mm512_storeu_si512(idx + cnt, _mm512_maskz_compress_epi32(m, iota));
            cnt += __builtin_popcount(m);
        }
    }
    return cnt;
}

VQ_AVX512 double sum_avx512(const float* p, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + j));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + j + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + j + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + j + 48));
    }
    double s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; j < n; ++j) s += p[j];
    return s;
}

const SimdOps kAvx512 = {"avx512", dot_rows_avx512, kPanel, pack_rows_avx512,
                         pack_queries_tiles<kTileQ>, tile_scores_avx512, scale_filter_avx512,
                         sum_avx512, dot_norm_rows_avx512, norm_factors_avx512};
#endif  // VQ_X86

}  // namespace

const SimdOps& ops_scalar() { return kScalar; }

#ifdef VQ_X86
const SimdOps* ops_avx2() { return &kAvx2; }
const SimdOps* ops_avx512() { return &kAvx512; }

bool cpu_has_avx2() {
    unsigned a, b, c, d;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512() {
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#else
const SimdOps* ops_avx2() { return nullptr; }
const SimdOps* ops_avx512() { return nullptr; }
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

}  // namespace vq
