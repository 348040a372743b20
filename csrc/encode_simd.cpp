// The arithmetic of the encoder, once per instruction set (see encode.h for the contract).
//
// As in topk_simd.cpp, one translation unit holds every variant through per-function target
// attributes. Each function has a SIMD body, a tail (masked on AVX-512, zero-padded loads or
// scalar on AVX2) and the complete scalar fallback below, which the tests also run.
// Conversions give the same bits on every path (round to nearest even everywhere; int8 by
// the same float32 multiply and rounding); sums of squares are float64, whose order differs
// between paths only below float32's resolution of the norms.
#include "encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "simd.h"

namespace vq {
namespace {

using namespace detail;

// ---------------------------------------------------------------- scalar conversions

inline uint32_t f32_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}

// float32 -> IEEE binary16, round to nearest even; overflow gives inf (F16C's result).
inline uint16_t f32_to_h16(float f) {
    const uint32_t x = f32_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {  // a normal half: rebias the exponent, round the 13 bits dropped
        const uint32_t r = ax - 0x38000000u;
        return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
    }
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
    // A subnormal half: h = m * 2^(e - 126) units of 2^-24, rounded to nearest even.
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - (ax >> 23);
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | h);
}

// float32 -> bfloat16 bits, round to nearest even (finite input).
inline uint16_t f32_to_b16(float f) {
    const uint32_t x = f32_bits(f);
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// ---------------------------------------------------------------- scalar variant

template <typename T>
double sumsq_f64_scalar_t(const T* __restrict row, int64_t d) {
    double acc[4] = {0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 4 <= d; j += 4)
        for (int u = 0; u < 4; ++u) {
            const double v = to_f32(row[j + u]);
            acc[u] += v * v;
        }
    double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; j < d; ++j) s += double(to_f32(row[j])) * to_f32(row[j]);
    return s;
}

double sumsq_f64_scalar(const void* row, Storage st, int64_t d) {
    switch (st) {
        case Storage::f32: return sumsq_f64_scalar_t(static_cast<const float*>(row), d);
        case Storage::f16: return sumsq_f64_scalar_t(static_cast<const h16*>(row), d);
        case Storage::bf16: return sumsq_f64_scalar_t(static_cast<const b16*>(row), d);
        case Storage::i8: return sumsq_f64_scalar_t(static_cast<const int8_t*>(row), d);
    }
    return 0;
}

double absmax_sumsq_scalar(const float* __restrict x, int64_t d, float* absmax) {
    double acc[4] = {0, 0, 0, 0};
    float m = 0;
    int64_t j = 0;
    for (; j + 4 <= d; j += 4)
        for (int u = 0; u < 4; ++u) {
            acc[u] += double(x[j + u]) * x[j + u];
            m = std::max(m, std::fabs(x[j + u]));
        }
    double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; j < d; ++j) {
        s += double(x[j]) * x[j];
        m = std::max(m, std::fabs(x[j]));
    }
    *absmax = m;
    return s;
}

// Converts elements [j0, d) one by one: the scalar path, and the AVX2 tails.
double convert_tail(const float* __restrict x, int64_t j0, int64_t d, Storage st, float inv, void* dst) {
    double ss = 0;
    for (int64_t j = j0; j < d; ++j) {
        float v = 0;
        if (st == Storage::f16) {
            const uint16_t h = f32_to_h16(x[j]);
            static_cast<uint16_t*>(dst)[j] = h;
            v = to_f32(h16{h});
        } else if (st == Storage::bf16) {
            const uint16_t b = f32_to_b16(x[j]);
            static_cast<uint16_t*>(dst)[j] = b;
            v = to_f32(b16{b});
        } else if (st == Storage::i8) {
            v = std::min(127.0f, std::max(-127.0f, std::nearbyint(x[j] * inv)));
            static_cast<int8_t*>(dst)[j] = static_cast<int8_t>(v);
        }
        ss += double(v) * v;
    }
    return ss;
}

double convert_row_scalar(const float* x, int64_t d, Storage st, float inv, void* dst) {
    return convert_tail(x, 0, d, st, inv, dst);
}

const EncodeOps kScalarEncode = {"scalar", sumsq_f64_scalar, absmax_sumsq_scalar, convert_row_scalar};

#ifdef VQ_X86
// ---------------------------------------------------------------- AVX2 + FMA + F16C

// a += lanes 0-3 squared, b += lanes 4-7 squared, in float64.
VQ_AVX2 inline void acc_sq(__m256 v, __m256d& a, __m256d& b) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a = _mm256_fmadd_pd(lo, lo, a);
    b = _mm256_fmadd_pd(hi, hi, b);
}

VQ_AVX2 inline double hsum4d(__m256d v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

VQ_AVX2 inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

template <typename T>
VQ_AVX2 double sumsq_f64_avx2_t(const T* __restrict row, int64_t d) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    __m256d a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {  // two vectors a step: four float64 chains
        acc_sq(ld8(row + j), a0, a1);
        acc_sq(ld8(row + j + 8), a2, a3);
    }
    for (; j + 8 <= d; j += 8) acc_sq(ld8(row + j), a0, a1);
    if (j < d) acc_sq(ld8_tail(row + j, d - j), a2, a3);
    return hsum4d(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
}

VQ_AVX2 double sumsq_f64_avx2(const void* row, Storage st, int64_t d) {
    switch (st) {
        case Storage::f32: return sumsq_f64_avx2_t(static_cast<const float*>(row), d);
        case Storage::f16: return sumsq_f64_avx2_t(static_cast<const h16*>(row), d);
        case Storage::bf16: return sumsq_f64_avx2_t(static_cast<const b16*>(row), d);
        case Storage::i8: return sumsq_f64_avx2_t(static_cast<const int8_t*>(row), d);
    }
    return 0;
}

VQ_AVX2 double absmax_sumsq_avx2(const float* __restrict x, int64_t d, float* absmax) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    __m256d a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
    __m256 m = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        const __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        acc_sq(v0, a0, a1);
        acc_sq(v1, a2, a3);
        m = _mm256_max_ps(m, _mm256_max_ps(_mm256_and_ps(v0, magnitude), _mm256_and_ps(v1, magnitude)));
    }
    for (; j + 8 <= d; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        acc_sq(v, a0, a1);
        m = _mm256_max_ps(m, _mm256_and_ps(v, magnitude));
    }
    if (j < d) {  // zero padding changes neither the sum nor the maximum
        const __m256 v = ld8_tail(x + j, d - j);
        acc_sq(v, a2, a3);
        m = _mm256_max_ps(m, _mm256_and_ps(v, magnitude));
    }
    *absmax = hmax8(m);
    return hsum4d(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
}

VQ_AVX2 double convert_row_avx2(const float* __restrict x, int64_t d, Storage st, float inv, void* dst) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t j = 0;
    if (st == Storage::f16) {
        auto* out = static_cast<uint16_t*>(dst);
        for (; j + 8 <= d; j += 8) {
            const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), h);
            acc_sq(_mm256_cvtph_ps(h), a0, a1);
        }
    } else if (st == Storage::bf16) {
        auto* out = static_cast<uint16_t*>(dst);
        const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
        for (; j + 8 <= d; j += 8) {
            const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(x + j));
            const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
            const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, bias), odd), 16);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j),
                             _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
            acc_sq(_mm256_castsi256_ps(_mm256_slli_epi32(r, 16)), a0, a1);
        }
    } else if (st == Storage::i8) {
        auto* out = static_cast<int8_t*>(dst);
        const __m256 vinv = _mm256_set1_ps(inv);
        const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
        for (; j + 8 <= d; j += 8) {
            // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does.
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), vinv));
            q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
            const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(out + j), _mm_packs_epi16(w, w));
            acc_sq(_mm256_cvtepi32_ps(q), a0, a1);
        }
    }
    return hsum4d(_mm256_add_pd(a0, a1)) + convert_tail(x, j, d, st, inv, dst);
}

const EncodeOps kAvx2Encode = {"avx2", sumsq_f64_avx2, absmax_sumsq_avx2, convert_row_avx2};

// ---------------------------------------------------------------- AVX-512 (F, BW, DQ, VL)

// a += lanes 0-7 squared, b += lanes 8-15 squared, in float64.
VQ_AVX512 inline void acc_sq16(__m512 v, __m512d& a, __m512d& b) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    a = _mm512_fmadd_pd(lo, lo, a);
    b = _mm512_fmadd_pd(hi, hi, b);
}

template <typename T>
VQ_AVX512 double sumsq_f64_avx512_t(const T* __restrict row, int64_t d) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    __m512d a2 = _mm512_setzero_pd(), a3 = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {  // two vectors a step: four float64 chains
        acc_sq16(ld16(row + j), a0, a1);
        acc_sq16(ld16(row + j + 16), a2, a3);
    }
    for (; j + 16 <= d; j += 16) acc_sq16(ld16(row + j), a0, a1);
    if (j < d) acc_sq16(ld16m(row + j, tail_mask(d - j)), a2, a3);
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
}

VQ_AVX512 double sumsq_f64_avx512(const void* row, Storage st, int64_t d) {
    switch (st) {
        case Storage::f32: return sumsq_f64_avx512_t(static_cast<const float*>(row), d);
        case Storage::f16: return sumsq_f64_avx512_t(static_cast<const h16*>(row), d);
        case Storage::bf16: return sumsq_f64_avx512_t(static_cast<const b16*>(row), d);
        case Storage::i8: return sumsq_f64_avx512_t(static_cast<const int8_t*>(row), d);
    }
    return 0;
}

VQ_AVX512 double absmax_sumsq_avx512(const float* __restrict x, int64_t d, float* absmax) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    __m512d a2 = _mm512_setzero_pd(), a3 = _mm512_setzero_pd();
    __m512 m = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        const __m512 v0 = _mm512_loadu_ps(x + j), v1 = _mm512_loadu_ps(x + j + 16);
        acc_sq16(v0, a0, a1);
        acc_sq16(v1, a2, a3);
        m = _mm512_max_ps(m, _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    }
    for (; j + 16 <= d; j += 16) {
        const __m512 v = _mm512_loadu_ps(x + j);
        acc_sq16(v, a0, a1);
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    if (j < d) {  // masked-off lanes are zero: they change neither the sum nor the maximum
        const __m512 v = _mm512_maskz_loadu_ps(tail_mask(d - j), x + j);
        acc_sq16(v, a2, a3);
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    *absmax = _mm512_reduce_max_ps(m);
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
}

VQ_AVX512 double convert_row_avx512(const float* __restrict x, int64_t d, Storage st, float inv, void* dst) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t j = 0; j < d; j += 16) {
        const __mmask16 m = d - j >= 16 ? __mmask16(0xFFFF) : tail_mask(d - j);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        if (st == Storage::f16) {
            const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_mask_storeu_epi16(static_cast<uint16_t*>(dst) + j, m, h);
            acc_sq16(_mm512_cvtph_ps(h), a0, a1);
        } else if (st == Storage::bf16) {
            const __m512i bits = _mm512_castps_si512(v);
            const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
            const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, bias), odd), 16);
            _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(dst) + j, m, r);
            acc_sq16(_mm512_castsi512_ps(_mm512_slli_epi32(r, 16)), a0, a1);
        } else if (st == Storage::i8) {
            // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does.
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
            q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
            _mm512_mask_cvtepi32_storeu_epi8(static_cast<int8_t*>(dst) + j, m, q);
            acc_sq16(_mm512_cvtepi32_ps(q), a0, a1);
        }
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

const EncodeOps kAvx512Encode = {"avx512", sumsq_f64_avx512, absmax_sumsq_avx512, convert_row_avx512};
#endif  // VQ_X86

}  // namespace

const EncodeOps& encode_ops_scalar() { return kScalarEncode; }

#ifdef VQ_X86
const EncodeOps* encode_ops_avx2() { return &kAvx2Encode; }
const EncodeOps* encode_ops_avx512() { return &kAvx512Encode; }
#else
const EncodeOps* encode_ops_avx2() { return nullptr; }
const EncodeOps* encode_ops_avx512() { return nullptr; }
#endif

}  // namespace vq
