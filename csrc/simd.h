// Internal to csrc/: what the per-ISA arithmetic files (topk_simd.cpp, encode_simd.cpp)
// share: the x86 detection, the 16-bit element types, scalar conversions and the vector
// loads that convert any storage type to float32 lanes. Not part of the binding's API.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "topk.h"


// VQCLIP_PORTABLE_ONLY builds the scalar path alone, as on ARM: a way to check the
// portable build on an x86 machine.
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
namespace detail {

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

// Raw rows' factors (SimdOps::dot_norm_rows) from the float32 sums of squares the row loop
// left in f[0, n): 1 / sqrt, or NaN where the float64 path must take the row; returns how
// many did. A pass of its own, after the rows: in the row loop it slowed the scan (benchmarks/RESULTS.md).
inline int64_t factors_from_sumsq(float* f, int64_t n) {
    int64_t slow = 0;
    for (int64_t r = 0; r < n; ++r) {
        const float ss = f[r];
        if (ss >= kMinSumsq && ss <= std::numeric_limits<float>::max()) {
            f[r] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ss)));
        } else {
            f[r] = std::numeric_limits<float>::quiet_NaN();
            ++slow;
        }
    }
    return slow;
}

#ifdef VQ_X86
// ---------------------------------------------------------------- AVX2 + FMA + F16C loads

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


// The last d % 8 elements, zero-padded to a whole vector (AVX2 has no masked loads for
// 8/16-bit elements); one more FMA into the same chain keeps the summation order fixed.
template <typename T>
VQ_AVX2 inline __m256 ld8_tail(const T* p, int64_t rem) {
    T tmp[8];
    std::memset(tmp, 0, sizeof tmp);
    std::memcpy(tmp, p, sizeof(T) * static_cast<size_t>(rem));
    return ld8(tmp);
}


// ---------------------------------------------------------------- AVX-512 loads

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

#endif  // VQ_X86

}  // namespace detail
}  // namespace vq
