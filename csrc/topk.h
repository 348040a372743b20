// Fused cosine-similarity + top-k over a gallery of stored vectors.
//
// The driver (topk.cpp) owns threading and selection; the arithmetic lives in one
// table of function pointers per instruction set (topk_simd.cpp), picked at run time.
// Nothing here touches Python: bindings.cpp is the only file that includes pybind11.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vq {

// How the gallery rows are stored. The numeric values are part of the binding's API.
enum class Storage : int32_t {
    f32 = 0,   // IEEE float32
    f16 = 1,   // IEEE binary16
    bf16 = 2,  // bfloat16 (upper half of a float32)
    i8 = 3,    // int8, symmetric per-row scale folded into the row factor
};

// Bytes of one stored element.
inline size_t storage_bytes(Storage st) {
    switch (st) {
        case Storage::f32: return 4;
        case Storage::f16:
        case Storage::bf16: return 2;
        case Storage::i8: return 1;
    }
    return 4;
}

enum class Simd : int32_t { scalar = 0, avx2 = 1, avx512 = 2 };

// One contiguous run of gallery rows. A gallery is a list of these so that appending
// never copies the rows already stored (and a memory-mapped base needs no copy at all).
struct Segment {
    const void* data;      // [rows, dim] in `storage`, C-contiguous
    // [rows]: multiplier turning a raw dot product into a cosine; nullptr for raw rows,
    // whose norms the kernel computes in the same pass as their dot products (one-shot).
    const float* factor;
    int64_t rows;
    int64_t first_id;      // global id of row 0 of this segment
};

// The arithmetic for one instruction set. Every function handles any d (vector tails
// are masked or scalar) and any row/query count.
struct SimdOps {
    const char* name;
    // scores[r] = <q, row r>, rows converted from `storage` on the fly.
    void (*dot_rows)(const float* q, const void* rows, Storage storage, int64_t nrows,
                     int64_t d, float* scores);
    // The many-query (tile) path works on packed copies: a gallery block is packed once
    // and every query passes over it; the queries are packed once per call.
    //
    // Rows per panel of a packed block. pack_rows writes ceil(nrows / panel) panels of
    // panel * d floats: dst[(p * d + j) * panel + i] = float(row p * panel + i, element j),
    // rows past nrows zero. panel == 1 is plain row-major float32.
    int64_t panel;
    void (*pack_rows)(const void* rows, Storage storage, int64_t nrows, int64_t d, float* dst);
    // Packs q [nq, d] float32 into dst (nq * d floats) in the layout tile_scores reads.
    void (*pack_queries)(const float* q, int64_t nq, int64_t d, float* dst);
    // scores[i * lds + r] = <q_i, g_r> for i < nq, r < ng, from the packed queries qp and
    // packed rows gp. Each score is one fixed summation order whatever nq, ng or the tile
    // position, so results do not depend on blocks, segments or threads. `ahead` (may be
    // null) is `ahead_bytes` of memory the caller reads next (the next block's rows): a
    // kernel may prefetch it while it computes, so that reading it overlaps the FMAs.
    void (*tile_scores)(const float* qp, int64_t nq, const float* gp, int64_t ng, int64_t d,
                        float* scores, int64_t lds, const void* ahead, int64_t ahead_bytes);
    // scores[r] *= factor[r]; writes the r with scores[r] >= thr to idx; returns their count.
    int64_t (*scale_filter)(float* scores, const float* factor, int64_t n, float thr,
                            int32_t* idx);
    // Sum of `n` floats; used to measure read bandwidth with the same code generation.
    double (*sum_f32)(const float* p, int64_t n);
    // Raw rows (a Segment without factors). scores[r] = <q, row r>, the same arithmetic as
    // dot_rows, and factor[r] = 1 / ||row r|| from the row's float32 sum of squares taken in
    // the same pass, so the gallery is read once. A row whose sum of squares is outside
    // [kMinSumsq, FLT_MAX] (zero, tiny, huge, NaN or inf) gets factor NaN and is left to the
    // driver's float64 path; returns how many rows did.
    int64_t (*dot_norm_rows)(const float* q, const void* rows, Storage storage, int64_t nrows,
                             int64_t d, float* scores, float* factor);
    // factor[r] as dot_norm_rows gives it (bit for bit), without the dot: the tile path's.
    int64_t (*norm_factors)(const void* rows, Storage storage, int64_t nrows, int64_t d,
                            float* factor);
};

// Below this float32 sum of squares a raw row goes to the float64 path: its squares may
// have lost bits to underflow (and zero rows score 0 there, never NaN).
constexpr float kMinSumsq = 0x1p-64f;

const SimdOps& ops_scalar();
const SimdOps* ops_avx2();     // nullptr when not compiled for this architecture
const SimdOps* ops_avx512();   // nullptr when not compiled for this architecture

bool cpu_has_avx2();
bool cpu_has_avx512();
Simd best_simd();
const SimdOps& ops_for(Simd simd);   // throws std::invalid_argument if the CPU lacks it
const char* simd_name(Simd simd);

struct TopkResult {
    std::vector<float> scores;    // [b, k]
    std::vector<int64_t> ids;     // [b, k]
};

// Top-k cosine of each query against all segments. `queries` [b, d] float32 need not be
// normalised. Scores sorted descending, ties by the lower id; missing results are
// id -1 and score -inf. `threads` <= 0 means the OpenMP default. Returns -1, or the
// lowest id of a raw row holding NaN or inf (the outputs are then meaningless).
int64_t topk_cosine(const float* queries, int64_t b, int64_t d,
                 const std::vector<Segment>& segments, Storage storage, int64_t k,
                 int threads, Simd simd, float* out_scores, int64_t* out_ids);

// Multi-threaded streaming sum, to measure the read bandwidth the kernels compete with.
double stream_sum(const float* p, int64_t n, int threads, Simd simd);

int max_threads();
bool have_openmp();

}  // namespace vq
