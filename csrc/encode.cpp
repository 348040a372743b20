// The encoding driver: rows split over the team, the checks, and the int8 rows too small
// for float32 arithmetic. The arithmetic comes from an EncodeOps table.
#include "encode.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace vq {
namespace {

using detail::kParallelMinWork;

// int8 rows whose max |x| is so small that 127 / max overflows float32: quantised in
// float64 instead (the float32 formula would give inf * 0 = NaN).
double convert_i8_wide(const float* x, int64_t d, float peak, int8_t* dst) {
    const double inv = 127.0 / static_cast<double>(peak);
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) {
        const double t = std::min(127.0, std::max(-127.0, std::nearbyint(double(x[j]) * inv)));
        dst[j] = static_cast<int8_t>(t);
        ss += t * t;
    }
    return ss;
}

// Runs body(lo, hi) on each thread's slice of [0, n) rows and rethrows the first failure.
template <typename Body>
void for_slices(int64_t n, int64_t d, int threads, Body body) {
    int t = detail::thread_count(threads);
    if (static_cast<double>(n) * d < kParallelMinWork) t = 1;
    std::exception_ptr failure;
#pragma omp parallel num_threads(t)
    {
        const int nt = detail::team_size(), me = detail::thread_id();
        try {
            body(n * me / nt, n * (me + 1) / nt);
        } catch (...) {
#pragma omp critical(vq_encode_failure)
            failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
}

// Keeps the lowest row reported by any thread.
void keep_first(int64_t& into, int64_t row) {
    if (row < 0) return;
#pragma omp critical(vq_encode_first)
    if (into < 0 || row < into) into = row;
}

}  // namespace

const EncodeOps& encode_ops_for(Simd simd) {
    ops_for(simd);  // the CPU and build checks, with their message
    switch (simd) {
        case Simd::avx2: return *encode_ops_avx2();
        case Simd::avx512: return *encode_ops_avx512();
        case Simd::scalar: break;
    }
    return encode_ops_scalar();
}

EncodeStatus encode_rows(const float* x, int64_t n, int64_t d, Storage st, void* dst, float* norms,
                         float* scales, int threads, Simd simd) {
    const EncodeOps& ops = encode_ops_for(simd);
    const size_t row_bytes = storage_bytes(st) * static_cast<size_t>(d);
    EncodeStatus status;
    for_slices(n, d, threads, [&](int64_t lo, int64_t hi) {
        int64_t nonfinite = -1, overflow = -1;
        for (int64_t r = lo; r < hi; ++r) {
            const float* row = x + r * d;
            void* out = st == Storage::f32 ? nullptr : static_cast<char*>(dst) + row_bytes * static_cast<size_t>(r);
            float peak = 0;
            const float norm_in = static_cast<float>(std::sqrt(ops.absmax_sumsq(row, d, &peak)));
            if (!std::isfinite(norm_in)) {  // the slice's first: later rows do not matter
                nonfinite = r;
                break;
            }
            if (st == Storage::f32) {
                norms[r] = norm_in;
            } else if (st == Storage::i8) {
                const float scale = peak / 127.0f, inv = peak > 0 ? 127.0f / peak : 0.0f;
                const double ss = std::isfinite(inv) ? ops.convert_row(row, d, st, inv, out)
                                                     : convert_i8_wide(row, d, peak, static_cast<int8_t*>(out));
                scales[r] = scale;
                norms[r] = static_cast<float>(std::sqrt(ss) * static_cast<double>(scale));
            } else {
                norms[r] = static_cast<float>(std::sqrt(ops.convert_row(row, d, st, 0.0f, out)));
                if (!std::isfinite(norms[r]) && overflow < 0) overflow = r;
            }
        }
        keep_first(status.nonfinite_row, nonfinite);
        keep_first(status.overflow_row, overflow);
    });
    return status;
}

int64_t row_norms(const void* rows, Storage st, int64_t n, int64_t d, const float* scales, float* norms,
                  int threads, Simd simd) {
    const EncodeOps& ops = encode_ops_for(simd);
    const size_t row_bytes = storage_bytes(st) * static_cast<size_t>(d);
    int64_t first_bad = -1;
    for_slices(n, d, threads, [&](int64_t lo, int64_t hi) {
        int64_t bad = -1;
        for (int64_t r = lo; r < hi; ++r) {
            const void* row = static_cast<const char*>(rows) + row_bytes * static_cast<size_t>(r);
            const double scale = scales ? std::fabs(static_cast<double>(scales[r])) : 1.0;
            norms[r] = static_cast<float>(std::sqrt(ops.sumsq_f64(row, st, d)) * scale);
            if (!std::isfinite(norms[r]) && bad < 0) bad = r;
        }
        keep_first(first_bad, bad);
    });
    return first_bad;
}

}  // namespace vq
