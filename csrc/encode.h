// Encoding float32 rows for a gallery, and the norms of stored rows: the passes that
// Gallery.from_rows, Gallery.append and index commits make over every row, threaded like
// the top-k kernels and run on the same SIMD path.
//
// The driver (encode.cpp) owns threading and the checks; the arithmetic lives in one table
// per instruction set (encode_simd.cpp), picked at run time as for the top-k kernels.
#pragma once

#include <cstdint>

#include "topk.h"

namespace vq {

// The arithmetic for one instruction set; every function handles any d.
struct EncodeOps {
    const char* name;
    // Sum of squares of one stored row, accumulated in float64: exact for int8, no overflow
    // for any finite float32 row; NaN or inf when the row holds either.
    double (*sumsq_f64)(const void* row, Storage storage, int64_t d);
    // The largest |x| of a float32 row and its float64 sum of squares, in one pass.
    double (*absmax_sumsq)(const float* x, int64_t d, float* absmax);
    // Converts a finite float32 row to `storage` (not f32): float16 and bfloat16 rounded to
    // nearest even (float16 overflows to inf), int8 as clamp(rint(x * inv), -127, 127) in
    // float32 arithmetic. Returns the float64 sum of squares of the stored values.
    double (*convert_row)(const float* x, int64_t d, Storage storage, float inv, void* dst);
};

const EncodeOps& encode_ops_scalar();
const EncodeOps* encode_ops_avx2();    // nullptr when not compiled for this architecture
const EncodeOps* encode_ops_avx512();  // nullptr when not compiled for this architecture
const EncodeOps& encode_ops_for(Simd simd);  // throws std::invalid_argument if the CPU lacks it

// The first bad row of an encode, -1 where there is none.
struct EncodeStatus {
    int64_t nonfinite_row = -1;  // input row holding NaN or inf, or whose norm overflows float32
    int64_t overflow_row = -1;   // row whose stored float16/bfloat16 values overflow to inf
};

// Encodes x [n, d] for `storage`: dst [n, d] in the storage type (unused for f32, whose rows
// are stored as given), norms [n] float32 (the L2 norm of each row as stored, int8
// dequantised), scales [n] (int8 only: symmetric, max |x| maps to 127). Rows are encoded
// in order within each thread's slice; a slice stops at its first non-finite row.
EncodeStatus encode_rows(const float* x, int64_t n, int64_t d, Storage storage, void* dst, float* norms,
                         float* scales, int threads, Simd simd);

// L2 norms [n] float32 of stored rows [n, d] (times |scales[r]| for int8), accumulated in
// float64. Returns -1, or the first row whose norm is NaN or inf.
int64_t row_norms(const void* rows, Storage storage, int64_t n, int64_t d, const float* scales, float* norms,
                  int threads, Simd simd);

}  // namespace vq
