// The arithmetic of the top-k kernels, once per instruction set.
//
// All variants live in this one translation unit, compiled for the baseline target; the
// AVX2 and AVX-512 functions carry __attribute__((target(...))) so that one binary holds
// every variant and topk.cpp picks one at run time from what the CPU reports. Building
// the whole module with -march=native would crash the wheel on older CPUs.
//
// Each kernel has the same shape: a SIMD body, a tail (masked on AVX-512, zero-padded on
// AVX2), and the complete scalar fallback below, which the tests also run. The tile
// kernel and its edges sum every query . row product in one order (one FMA chain, then
// a fixed lane tree); the direct kernel in another (four chains). Which one runs depends
// only on the batch size, so for a given batch a score is bit-identical whatever the
// tile position, block, segment or thread split: results do not depend on threads or
// on how the gallery was appended. (B = 1 and B = 8 may differ in the last bit.)
#include "topk.h"

#include <cmath>
#include <cstring>

// VQCLIP_PORTABLE_ONLY builds the scalar path alone, as on ARM: a way to check the
// portable build on an x86 machine (see the report of issue 4).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(VQCLIP_PORTABLE_ONLY)
#define VQ_X86 1
#include <cpuid.h>
#include <immintrin.h>
// GCC 12 reports its own _mm512_undefined_* placeholders inside the AVX-512 headers as
// "used uninitialized"; a false positive of the intrinsics headers, not of this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace vq {
namespace {

// Distinct element types for the two 16-bit formats so overloads can tell them apart.
struct h16 { uint16_t bits; };
struct b16 { uint16_t bits; };

// ---------------------------------------------------------------- scalar conversions

inline float bits_to_f32(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline float to_f32(float x) { return x; }
inline float to_f32(int8_t x) { return static_cast<float>(x); }
inline float to_f32(b16 x) { return bits_to_f32(static_cast<uint32_t>(x.bits) << 16); }
inline float to_f32(h16 x) {
    const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
    uint32_t exp = (x.bits >> 10) & 0x1fu;
    uint32_t man = x.bits & 0x3ffu;
    if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));      // inf / NaN
    if (exp != 0) return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return bits_to_f32(sign);                                     // +-0
    // Subnormal half: renormalise so it becomes a normal float.
    uint32_t shift = 0;
    while (!(man & 0x400u)) { man <<= 1; ++shift; }
    return bits_to_f32(sign | ((113u - shift) << 23) | ((man & 0x3ffu) << 13));
}

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
                        float* scores, int64_t lds) {
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

const SimdOps kScalar = {"scalar", dot_rows_scalar, convert_rows_scalar, tile_scores_scalar,
                         scale_filter_scalar, sum_scalar};

#ifdef VQ_X86
// ---------------------------------------------------------------- AVX2 + FMA + F16C

#define VQ_AVX2 __attribute__((target("avx2,fma,f16c")))

VQ_AVX2 inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
VQ_AVX2 inline __m256 ld8(const h16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
VQ_AVX2 inline __m256 ld8(const b16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
VQ_AVX2 inline __m256 ld8(const int8_t* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

VQ_AVX2 inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Lane j of the result is the horizontal sum of v[j].
VQ_AVX2 inline __m256 reduce8x8(const __m256* v) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]);
    const __m256 t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]);
    const __m256 t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1);  // a b c d | a b c d (low, high halves)
    const __m256 u1 = _mm256_hadd_ps(t2, t3);  // e f g h | e f g h
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Sum of the 8 lanes in exactly the order reduce8x8 uses, so that a score does not
// depend on which kernel (or which position in a tile) computed it.
VQ_AVX2 inline float tree_sum8(__m256 v) {
    alignas(32) float x[8];
    _mm256_store_ps(x, v);
    return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

// The last d % 8 elements, zero-padded to a whole vector (AVX2 has no masked loads for
// 8/16-bit elements); one more FMA into the same chain keeps the summation order fixed.
template <typename T>
VQ_AVX2 inline __m256 ld8_tail(const T* p, int64_t rem) {
    T tmp[8];
    std::memset(tmp, 0, sizeof tmp);
    std::memcpy(tmp, p, sizeof(T) * static_cast<size_t>(rem));
    return ld8(tmp);
}

// One query . one row: the reference order every AVX2 kernel follows (one FMA chain
// over whole vectors, padded tail, tree_sum8).
template <typename T>
VQ_AVX2 float dot1_avx2(const float* __restrict q, const T* __restrict row, int64_t d) {
    const int64_t dv = d & ~int64_t(7);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < dv; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), ld8(row + j), acc);
    if (dv < d) acc = _mm256_fmadd_ps(ld8_tail(q + dv, d - dv), ld8_tail(row + dv, d - dv), acc);
    return tree_sum8(acc);
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

template <typename T>
VQ_AVX2 void convert_avx2_t(const T* src, int64_t n, float* dst) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, ld8(src + j));
    for (; j < n; ++j) dst[j] = to_f32(src[j]);
}

VQ_AVX2 void convert_rows_avx2(const void* rows, Storage st, int64_t nrows, int64_t d, float* dst) {
    const int64_t n = nrows * d;
    switch (st) {
        case Storage::f32: std::memcpy(dst, rows, sizeof(float) * n); return;
        case Storage::f16: return convert_avx2_t(static_cast<const h16*>(rows), n, dst);
        case Storage::bf16: return convert_avx2_t(static_cast<const b16*>(rows), n, dst);
        case Storage::i8: return convert_avx2_t(static_cast<const int8_t*>(rows), n, dst);
    }
}

// 4 queries x 2 rows per step: 8 accumulators, 6 loads per 8 FMAs.
VQ_AVX2 void tile_scores_avx2(const float* q, int64_t nq, const float* g, int64_t ng, int64_t d,
                              float* scores, int64_t lds) {
    constexpr int64_t MR = 4, NR = 2;
    const int64_t dv = d & ~int64_t(7);
    int64_t i = 0;
    for (; i + MR <= nq; i += MR) {
        const float* q0 = q + i * d;
        int64_t r = 0;
        for (; r + NR <= ng; r += NR) {
            const float* g0 = g + r * d;
            __m256 acc[8];
            for (auto& a : acc) a = _mm256_setzero_ps();
            for (int64_t j = 0; j < dv; j += 8) {
                const __m256 x0 = _mm256_loadu_ps(g0 + j), x1 = _mm256_loadu_ps(g0 + d + j);
                for (int m = 0; m < MR; ++m) {
                    const __m256 y = _mm256_loadu_ps(q0 + m * d + j);
                    acc[2 * m] = _mm256_fmadd_ps(y, x0, acc[2 * m]);
                    acc[2 * m + 1] = _mm256_fmadd_ps(y, x1, acc[2 * m + 1]);
                }
            }
            if (dv < d) {
                const __m256 x0 = ld8_tail(g0 + dv, d - dv), x1 = ld8_tail(g0 + d + dv, d - dv);
                for (int m = 0; m < MR; ++m) {
                    const __m256 y = ld8_tail(q0 + m * d + dv, d - dv);
                    acc[2 * m] = _mm256_fmadd_ps(y, x0, acc[2 * m]);
                    acc[2 * m + 1] = _mm256_fmadd_ps(y, x1, acc[2 * m + 1]);
                }
            }
            float out[8];
            _mm256_storeu_ps(out, reduce8x8(acc));
            for (int m = 0; m < MR; ++m) {
                scores[(i + m) * lds + r] = out[2 * m];
                scores[(i + m) * lds + r + 1] = out[2 * m + 1];
            }
        }
        for (; r < ng; ++r)
            for (int m = 0; m < MR; ++m) scores[(i + m) * lds + r] = dot1_avx2(q0 + m * d, g + r * d, d);
    }
    for (; i < nq; ++i)  // left-over queries: the tile's summation order, not the direct path's
        for (int64_t r = 0; r < ng; ++r) scores[i * lds + r] = dot1_avx2(q + i * d, g + r * d, d);
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

const SimdOps kAvx2 = {"avx2", dot_rows_avx2, convert_rows_avx2, tile_scores_avx2,
                       scale_filter_avx2, sum_avx2};

// ---------------------------------------------------------------- AVX-512 (F, BW, DQ, VL)

#define VQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

VQ_AVX512 inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
VQ_AVX512 inline __m512 ld16(const h16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
VQ_AVX512 inline __m512 ld16(const b16* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
VQ_AVX512 inline __m512 ld16(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// Masked loads for the tail of d: lanes outside the mask read nothing and are zero.
VQ_AVX512 inline __m512 ld16m(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
VQ_AVX512 inline __m512 ld16m(const h16* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
VQ_AVX512 inline __m512 ld16m(const b16* p, __mmask16 m) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
VQ_AVX512 inline __m512 ld16m(const int8_t* p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

VQ_AVX512 inline __mmask16 tail_mask(int64_t rem) {
    return static_cast<__mmask16>((1u << rem) - 1u);
}

// Lane j of the result is the horizontal sum of v[j], for 16 accumulators: a transpose-add
// tree that costs 15 shuffles+adds per 16 sums instead of ~8 per sum.
VQ_AVX512 inline __m512 reduce16x16(const __m512* v) {
    __m512 t[8];
    for (int p = 0; p < 8; ++p)  // (a0+a2, b0+b2, a1+a3, b1+b3) per 128-bit lane
        t[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                             _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
    __m512 u[4];
    for (int p = 0; p < 4; ++p)  // (a, b, c, d) partial sums per 128-bit lane
        u[p] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * p], t[2 * p + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * p], t[2 * p + 1], 0xEE));
    const __m512 x01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44),
                                     _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
    const __m512 x23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44),
                                     _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x01, x23, 0x88), _mm512_shuffle_f32x4(x01, x23, 0xDD));
}

// Sum of the 16 lanes in exactly the order reduce16x16 uses, so that a score does not
// depend on which kernel (or which position in a tile) computed it.
VQ_AVX512 inline float tree_sum16(__m512 v) {
    alignas(64) float x[16];
    _mm512_store_ps(x, v);
    float s[4];
    for (int l = 0; l < 4; ++l) s[l] = (x[4 * l] + x[4 * l + 2]) + (x[4 * l + 1] + x[4 * l + 3]);
    return (s[0] + s[2]) + (s[1] + s[3]);
}

// One query . one row: the reference order every AVX-512 kernel follows (one FMA chain
// over whole vectors, masked tail, tree_sum16).
template <typename T>
VQ_AVX512 float dot1_avx512(const float* __restrict q, const T* __restrict row, int64_t d) {
    const int64_t dv = d & ~int64_t(15);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < dv; j += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), ld16(row + j), acc);
    if (dv < d) {
        const __mmask16 m = tail_mask(d - dv);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + dv), ld16m(row + dv, m), acc);
    }
    return tree_sum16(acc);
}

// The direct (few-query) path: one row at a time, four FMA chains over interleaved
// 16-wide pieces. Reading each row front to back keeps the hardware prefetcher on one
// stream: interleaving 4 or 16 rows, tried first, ran 1.2-3x slower from DRAM
// (400k x 512 rows, one core: float32 18.8 vs 12.6-15.0 GB/s, int8 17.8 vs 5.5-7.8).
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

template <typename T>
VQ_AVX512 void convert_avx512_t(const T* src, int64_t n, float* dst) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(dst + j, ld16(src + j));
    if (j < n) {
        const __mmask16 m = tail_mask(n - j);
        _mm512_mask_storeu_ps(dst + j, m, ld16m(src + j, m));
    }
}

VQ_AVX512 void convert_rows_avx512(const void* rows, Storage st, int64_t nrows, int64_t d,
                                   float* dst) {
    const int64_t n = nrows * d;
    switch (st) {
        case Storage::f32: std::memcpy(dst, rows, sizeof(float) * n); return;
        case Storage::f16: return convert_avx512_t(static_cast<const h16*>(rows), n, dst);
        case Storage::bf16: return convert_avx512_t(static_cast<const b16*>(rows), n, dst);
        case Storage::i8: return convert_avx512_t(static_cast<const int8_t*>(rows), n, dst);
    }
}

// The register-blocked micro-kernel: 4 queries x 4 rows per step, 16 accumulators and
// 8 loads per 16 FMAs, reduced together by reduce16x16 at the end of d.
VQ_AVX512 void tile_scores_avx512(const float* q, int64_t nq, const float* g, int64_t ng,
                                  int64_t d, float* scores, int64_t lds) {
    constexpr int64_t MR = 4, NR = 4;
    const int64_t dv = d & ~int64_t(15);
    const __mmask16 mt = tail_mask(d - dv);
    int64_t i = 0;
    for (; i + MR <= nq; i += MR) {
        const float* q0 = q + i * d;
        int64_t r = 0;
        for (; r + NR <= ng; r += NR) {
            const float* g0 = g + r * d;
            __m512 acc[16];
            for (auto& a : acc) a = _mm512_setzero_ps();
            for (int64_t j = 0; j < dv; j += 16) {
                __m512 y[MR];
                for (int m = 0; m < MR; ++m) y[m] = _mm512_loadu_ps(q0 + m * d + j);
                for (int n = 0; n < NR; ++n) {
                    const __m512 x = _mm512_loadu_ps(g0 + n * d + j);
                    for (int m = 0; m < MR; ++m) acc[m * NR + n] = _mm512_fmadd_ps(y[m], x, acc[m * NR + n]);
                }
            }
            if (dv < d) {
                __m512 y[MR];
                for (int m = 0; m < MR; ++m) y[m] = _mm512_maskz_loadu_ps(mt, q0 + m * d + dv);
                for (int n = 0; n < NR; ++n) {
                    const __m512 x = _mm512_maskz_loadu_ps(mt, g0 + n * d + dv);
                    for (int m = 0; m < MR; ++m) acc[m * NR + n] = _mm512_fmadd_ps(y[m], x, acc[m * NR + n]);
                }
            }
            alignas(64) float out[16];
            _mm512_store_ps(out, reduce16x16(acc));
            for (int m = 0; m < MR; ++m) std::memcpy(scores + (i + m) * lds + r, out + m * NR, sizeof(float) * NR);
        }
        for (; r < ng; ++r)
            for (int m = 0; m < MR; ++m) scores[(i + m) * lds + r] = dot1_avx512(q0 + m * d, g + r * d, d);
    }
    for (; i < nq; ++i)  // left-over queries: the tile's summation order, not the direct path's
        for (int64_t r = 0; r < ng; ++r) scores[i * lds + r] = dot1_avx512(q + i * d, g + r * d, d);
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

const SimdOps kAvx512 = {"avx512", dot_rows_avx512, convert_rows_avx512, tile_scores_avx512,
                         scale_filter_avx512, sum_avx512};
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
