// The top-k driver: query normalisation, blocking over the gallery, per-thread
// selection and the final merge. The arithmetic comes from a SimdOps table.
//
// Threads (OpenMP when the build found it): each thread scans a contiguous slice of the
// gallery with its own selectors for every query, merged at the end, so the gallery is
// read once, by all cores together, and each block is converted/packed by one thread
// (splitting the queries would read the gallery once per thread: benchmarks/RESULTS.md).
// Extra memory is O(threads x b x k + block), never the b x n scores.
//
// Raw segments (no factors: the one-shot call) get each row's norm from the same read as
// its dot products; the rare rows whose float32 sum of squares is out of range are scored
// in float64 here, and the first one holding NaN or inf ends the call with its id.
#include "topk.h"

#include "parallel.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <stdexcept>

namespace vq {
namespace {

using detail::kParallelMinWork;
using detail::team_size;
using detail::thread_count;
using detail::thread_id;

// From this many queries per pass the register-blocked tile kernel is used; below it
// each row is dotted with each query directly (conversion fused, no scratch copy).
constexpr int64_t kTileMinQueries = 4;
// Queries scored together against one gallery block (bounds the score buffer).
constexpr int64_t kQueryGroup = 256;
// Gallery block sizes (float32 bytes) for the direct and the tile path.
constexpr int64_t kDirectBlockBytes = int64_t(128) << 10;
// Tile path: block size hardly matters between 64 and 512 KiB (benchmarks/RESULTS.md).
constexpr int64_t kTileBlockBytes = int64_t(128) << 10;
// Selection keeps a buffer of up to 2k hits, cut back to the best k with nth_element
// when full; the k-th score then filters what enters. It never loses to a binary heap
// and wins where every row enters (ascending scores; benchmarks/RESULTS.md), so it is
// used for every k; k = 1 is a plain running arg-max.

struct Hit {
    float score;
    int64_t id;
};

// Strict order of the output: higher score first, then the lower id.
inline bool better(const Hit& a, const Hit& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// The best k hits seen so far for one query.
class Selector {
public:
    explicit Selector(int64_t k) : k_(k) { hits_.reserve(static_cast<size_t>(k == 1 ? 1 : 2 * k)); }

    // Scores below this cannot enter; scores equal to it might (the id decides).
    float threshold() const { return thr_; }

    void push(float score, int64_t id) {
        if (score < thr_) return;
        const Hit h{score, id};
        if (k_ == 1) {  // arg-max
            if (hits_.empty()) hits_.push_back(h);
            else if (better(h, hits_[0])) hits_[0] = h;
            thr_ = hits_[0].score;
            return;
        }
        hits_.push_back(h);
        if (static_cast<int64_t>(hits_.size()) == 2 * k_) {
            std::nth_element(hits_.begin(), hits_.begin() + (k_ - 1), hits_.end(), better);
            thr_ = hits_[k_ - 1].score;
            hits_.resize(static_cast<size_t>(k_));
        }
    }

    void append_to(std::vector<Hit>& out) const { out.insert(out.end(), hits_.begin(), hits_.end()); }

private:
    int64_t k_;
    float thr_ = -std::numeric_limits<float>::infinity();
    std::vector<Hit> hits_;
};

// Sorts `hits` and writes the best k of them to one output row, padding with (-inf, -1).
void write_row(std::vector<Hit>& hits, int64_t k, float* scores, int64_t* ids) {
    const int64_t n = std::min<int64_t>(k, static_cast<int64_t>(hits.size()));
    std::partial_sort(hits.begin(), hits.begin() + n, hits.end(), better);
    for (int64_t j = 0; j < n; ++j) {
        scores[j] = hits[j].score;
        ids[j] = hits[j].id;
    }
    for (int64_t j = n; j < k; ++j) {
        scores[j] = -std::numeric_limits<float>::infinity();
        ids[j] = -1;
    }
}

float* align64(float* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return reinterpret_cast<float*>((a + 63) & ~uintptr_t(63));
}

// Gallery rows per block: the block stays in L2 while every query passes over it.
int64_t block_rows(const SimdOps& ops, bool tiled, int64_t d) {
    const int64_t bytes = tiled ? kTileBlockBytes : kDirectBlockBytes;
    const int64_t unit = tiled ? std::max<int64_t>(4, ops.panel) : 4;
    return std::max<int64_t>(unit, bytes / (4 * d) / unit * unit);
}

// A raw row's cosine with a normalised query in float64, for the rows whose float32 sum
// of squares is out of range (SimdOps::dot_norm_rows). Returns false for NaN or inf.
template <typename T>
bool exact_cosine(const float* q, const T* row, int64_t d, float* score) {
    double dot = 0, ss = 0;
    for (int64_t j = 0; j < d; ++j) {
        const double v = detail::to_f32(row[j]);
        dot += double(q[j]) * v;
        ss += v * v;
    }
    if (!std::isfinite(ss)) return false;
    *score = ss > 0 ? static_cast<float>(dot / std::sqrt(ss)) : 0.0f;
    return true;
}

bool exact_cosine(const float* q, const void* row, Storage st, int64_t d, float* score) {
    switch (st) {
        case Storage::f32: return exact_cosine(q, static_cast<const float*>(row), d, score);
        case Storage::f16: return exact_cosine(q, static_cast<const detail::h16*>(row), d, score);
        case Storage::bf16: return exact_cosine(q, static_cast<const detail::b16*>(row), d, score);
        case Storage::i8: return exact_cosine(q, static_cast<const int8_t*>(row), d, score);
    }
    return false;
}

// Scans global rows [r0, r1) against queries qn[q0, q1) (normalised, [b, d]) and feeds
// sel[q - q0]. Rows are taken segment by segment in blocks that stay in cache. Returns
// -1, or the first raw row (global id) holding NaN or inf, where the scan stops.
int64_t scan(const SimdOps& ops, const float* qn, int64_t q0, int64_t q1, int64_t d,
             const std::vector<Segment>& segments, Storage st, int64_t r0, int64_t r1,
             Selector* sel) {
    const int64_t nq = q1 - q0;
    const bool tiled = nq >= kTileMinQueries && ops.tile_scores != nullptr;
    const int64_t block = block_rows(ops, tiled, d);
    const int64_t group = std::min(nq, tiled ? kQueryGroup : int64_t(1));
    // float32 rows in the plain layout are read in place; anything else is packed.
    const bool pack = tiled && !(ops.panel == 1 && st == Storage::f32);
    const int64_t panels = (block + ops.panel - 1) / ops.panel;
    // +16 floats: room to start the packed block on a 64-byte line (aligned vector loads).
    std::vector<float> packed_store(pack ? static_cast<size_t>(panels * ops.panel * d + 16) : 0);
    float* packed = align64(packed_store.data());
    std::vector<float> qp(tiled ? static_cast<size_t>(nq * d) : 0);
    if (tiled)  // each group packed on its own: a group is what one tile_scores call reads
        for (int64_t g0 = q0; g0 < q1; g0 += group)
            ops.pack_queries(qn + g0 * d, std::min(group, q1 - g0), d, qp.data() + (g0 - q0) * d);
    std::vector<float> buf(static_cast<size_t>(group * block));
    std::vector<int32_t> idx(static_cast<size_t>(block + 16));  // +16: whole-vector stores
    // Raw segments: the block's factors, and its rows left to the float64 path.
    std::vector<float> fbuf;
    std::vector<int32_t> slow;

    int64_t seg_start = 0;
    for (const Segment& seg : segments) {
        const int64_t lo = std::max(r0, seg_start), hi = std::min(r1, seg_start + seg.rows);
        seg_start += seg.rows;
        if (lo >= hi) continue;
        const int64_t local0 = lo - (seg_start - seg.rows);
        const int64_t local1 = hi - (seg_start - seg.rows);
        const char* base = static_cast<const char*>(seg.data);
        const size_t row_bytes = storage_bytes(st) * static_cast<size_t>(d);
        const bool raw = seg.factor == nullptr;
        if (raw) fbuf.resize(static_cast<size_t>(block));
        for (int64_t b0 = local0; b0 < local1; b0 += block) {
            const int64_t nb = std::min(block, local1 - b0);
            const void* rows = base + row_bytes * static_cast<size_t>(b0);
            const float* factor = raw ? fbuf.data() : seg.factor + b0;
            const int64_t id0 = seg.first_id + b0;
            // Raw rows the SIMD path left out (factor NaN): checked, then scored in float64
            // with factor 1. The first bad one ends this thread's scan.
            auto take_slow = [&](int64_t count) -> int64_t {
                slow.clear();
                for (int64_t r = 0; count > 0 && r < nb; ++r)
                    if (std::isnan(fbuf[r])) {
                        float s;
                        if (!exact_cosine(qn + q0 * d, static_cast<const char*>(rows) + row_bytes * r, st, d, &s))
                            return id0 + r;
                        slow.push_back(static_cast<int32_t>(r));
                        fbuf[r] = 1.0f;
                        --count;
                    }
                return -1;
            };
            auto patch_slow = [&](int64_t q, float* s) {
                for (const int32_t r : slow)
                    exact_cosine(qn + q * d, static_cast<const char*>(rows) + row_bytes * r, st, d, s + r);
            };
            if (tiled) {
                const float* g = static_cast<const float*>(rows);
                if (pack) {  // convert and pack once, reuse for every query
                    ops.pack_rows(rows, st, nb, d, packed);
                    g = packed;
                }
                if (raw) {  // the norms from the block just read, still in cache
                    const int64_t bad = take_slow(ops.norm_factors(rows, st, nb, d, fbuf.data()));
                    if (bad >= 0) return bad;
                }
                // The next block of this segment, for the kernel to prefetch.
                const int64_t next = std::min(block, local1 - b0 - nb);
                const char* ahead = static_cast<const char*>(rows) + row_bytes * static_cast<size_t>(nb);
                for (int64_t g0 = q0; g0 < q1; g0 += group) {
                    const int64_t ng = std::min(group, q1 - g0);
                    ops.tile_scores(qp.data() + (g0 - q0) * d, ng, g, nb, d, buf.data(), block,
                                    g0 == q0 && next > 0 ? ahead : nullptr,
                                    static_cast<int64_t>(row_bytes) * next);
                    for (int64_t i = 0; i < ng; ++i) {
                        float* s = buf.data() + i * block;
                        if (raw) patch_slow(g0 + i, s);
                        Selector& se = sel[g0 + i - q0];
                        const int64_t c = ops.scale_filter(s, factor, nb, se.threshold(), idx.data());
                        for (int64_t j = 0; j < c; ++j) se.push(s[idx[j]], id0 + idx[j]);
                    }
                }
            } else {
                for (int64_t q = q0; q < q1; ++q) {
                    if (raw && q == q0) {  // norms in the same pass as the first query's dots
                        const int64_t bad =
                            take_slow(ops.dot_norm_rows(qn + q * d, rows, st, nb, d, buf.data(), fbuf.data()));
                        if (bad >= 0) return bad;
                    } else {
                        ops.dot_rows(qn + q * d, rows, st, nb, d, buf.data());
                    }
                    if (raw) patch_slow(q, buf.data());
                    Selector& se = sel[q - q0];
                    const int64_t c = ops.scale_filter(buf.data(), factor, nb, se.threshold(), idx.data());
                    for (int64_t j = 0; j < c; ++j) se.push(buf[idx[j]], id0 + idx[j]);
                }
            }
        }
    }
    return -1;
}

}  // namespace

int max_threads() { return thread_count(0); }

bool have_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

Simd best_simd() {
    if (ops_avx512() && cpu_has_avx512()) return Simd::avx512;
    if (ops_avx2() && cpu_has_avx2()) return Simd::avx2;
    return Simd::scalar;
}

const char* simd_name(Simd simd) {
    switch (simd) {
        case Simd::scalar: return "scalar";
        case Simd::avx2: return "avx2";
        case Simd::avx512: return "avx512";
    }
    return "unknown";
}

const SimdOps& ops_for(Simd simd) {
    switch (simd) {
        case Simd::scalar: return ops_scalar();
        case Simd::avx2:
            if (ops_avx2() && cpu_has_avx2()) return *ops_avx2();
            break;
        case Simd::avx512:
            if (ops_avx512() && cpu_has_avx512()) return *ops_avx512();
            break;
    }
    throw std::invalid_argument(std::string("SIMD path '") + simd_name(simd) +
                                "' is not supported by this CPU or build");
}

int64_t topk_cosine(const float* queries, int64_t b, int64_t d, const std::vector<Segment>& segments,
                    Storage st, int64_t k, int threads, Simd simd, float* out_scores,
                    int64_t* out_ids) {
    if (k < 1) throw std::invalid_argument("k must be >= 1");
    if (d < 1) throw std::invalid_argument("dimension must be >= 1");
    const SimdOps& ops = ops_for(simd);
    int64_t n = 0;
    for (const Segment& s : segments) n += s.rows;
    const int64_t kk = std::min(k, n);  // selectors never hold more than the gallery

    // Normalised queries; a zero query stays zero and scores 0 against every row.
    std::vector<float> qn(static_cast<size_t>(b * d));
    for (int64_t i = 0; i < b; ++i) {
        const float* q = queries + i * d;
        double ss = 0;
        for (int64_t j = 0; j < d; ++j) ss += double(q[j]) * double(q[j]);
        const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
        for (int64_t j = 0; j < d; ++j) qn[i * d + j] = static_cast<float>(q[j] * inv);
    }

    std::vector<Hit> merged;
    if (n == 0 || b == 0) {
        for (int64_t i = 0; i < b; ++i) write_row(merged, k, out_scores + i * k, out_ids + i * k);
        return -1;
    }

    int t = thread_count(threads);
    if (static_cast<double>(b) * n * d < kParallelMinWork) t = 1;
    t = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, n / 16 + 1)));
    std::exception_ptr failure;

    // Gallery slices, one per member of the team that runs: every thread keeps selectors
    // for all queries; merged below.
    std::vector<std::vector<Selector>> sel(static_cast<size_t>(t));
    std::vector<int64_t> bad(static_cast<size_t>(t), -1);  // per thread: its slice's first bad raw row
    int team = 1;
#pragma omp parallel num_threads(t)
    {
        const int nt = team_size(), me = thread_id();
#pragma omp single
        team = nt;
        try {
            const int64_t lo = n * me / nt, hi = n * (me + 1) / nt;
            sel[me].assign(static_cast<size_t>(b), Selector(kk));
            bad[me] = scan(ops, qn.data(), 0, b, d, segments, st, lo, hi, sel[me].data());
        } catch (...) {
#pragma omp critical(vq_failure)
            failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
    for (int p = 0; p < team; ++p)  // slices ascend with p: the first bad slice has the first bad row
        if (bad[p] >= 0) return bad[p];
    for (int64_t i = 0; i < b; ++i) {
        merged.clear();
        for (int p = 0; p < team; ++p) sel[p][i].append_to(merged);
        write_row(merged, k, out_scores + i * k, out_ids + i * k);
    }
    return -1;
}

double stream_sum(const float* p, int64_t n, int threads, Simd simd) {
    const SimdOps& ops = ops_for(simd);
    const int t = thread_count(threads);
    double total = 0;
#pragma omp parallel num_threads(t) reduction(+ : total)
    {
        const int nt = team_size(), me = thread_id();
        const int64_t lo = n * me / nt, hi = n * (me + 1) / nt;
        total += ops.sum_f32(p + lo, hi - lo);
    }
    return total;
}

}  // namespace vq
