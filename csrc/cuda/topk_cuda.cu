// CUDA variant of the fused cosine + top-k: fp16 gallery resident on the GPU.
//
// STATUS: NOT YET RUN ON A GPU. It compiles with nvcc (CUDA 13) on the CPU-only build
// machine; benchmarks/gpu_check.sh builds, tests and times it on a GPU machine.
//
// Two kernels per search, never the b x n score matrix:
//   1. score_select: one block per (chunk of kChunk rows, query). Each warp takes rows in
//      turn; its 32 lanes read the fp16 row as half2 pairs, multiply with the normalised
//      float query held in shared memory, and reduce by warp shuffles. The block's
//      kChunk scores sit in shared memory; k rounds of a block-wide arg-max (warp shuffle
//      then across warps) pick the chunk's best k, ties to the lower id.
//   2. merge_select: one block per query runs the same arg-max rounds over the chunks'
//      candidates and writes the final sorted k.
// k is limited to kMaxK so each round's state fits in shared memory.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 2048;   // rows scored per block
constexpr int kMaxK = 1024;

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

struct Best {
    float score;
    int64_t id;
    int slot;  // position in the scanned array, to remove it for the next round
};

// a beats b: higher score, then lower id. Empty slots carry id -1 and score -inf and
// lose to everything real.
__device__ __forceinline__ bool beats(float sa, int64_t ia, float sb, int64_t ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    return sa > sb || (sa == sb && ia < ib);
}

__device__ Best warp_best(Best b) {
    for (int off = 16; off > 0; off >>= 1) {
        Best o;
        o.score = __shfl_down_sync(0xffffffffu, b.score, off);
        o.id = __shfl_down_sync(0xffffffffu, b.id, off);
        o.slot = __shfl_down_sync(0xffffffffu, b.slot, off);
        if (beats(o.score, o.id, b.score, b.id)) b = o;
    }
    return b;  // valid in lane 0
}

// k rounds of block-wide arg-max over (scores[i], ids[i]) for i < n; removes each
// winner and writes it to out_scores/out_ids[round]. n <= kChunk (shared arrays).
__device__ void block_select(float* scores, int64_t* ids, int n, int k, float* out_scores,
                             int64_t* out_ids) {
    __shared__ Best warp_winners[kWarps];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int round = 0; round < k; ++round) {
        Best b{-INFINITY, -1, -1};
        for (int i = threadIdx.x; i < n; i += kThreads)
            if (beats(scores[i], ids[i], b.score, b.id)) b = Best{scores[i], ids[i], i};
        b = warp_best(b);
        if (lane == 0) warp_winners[warp] = b;
        __syncthreads();
        if (warp == 0) {
            b = lane < kWarps ? warp_winners[lane] : Best{-INFINITY, -1, -1};
            b = warp_best(b);
            if (lane == 0) {
                out_scores[round] = b.id >= 0 ? b.score : -INFINITY;
                out_ids[round] = b.id;
                if (b.slot >= 0) ids[b.slot] = -1;  // removed for the next round
            }
        }
        __syncthreads();
    }
}

__global__ void score_select(const __half* __restrict gallery, const float* __restrict factor,
                             int64_t n, int d, const float* __restrict queries, int k,
                             float* cand_scores, int64_t* cand_ids, int chunks) {
    extern __shared__ __align__(16) unsigned char smem[];
    int64_t* ids = reinterpret_cast<int64_t*>(smem);      // [kChunk], first: 8-byte aligned
    float* scores = reinterpret_cast<float*>(ids + kChunk);  // [kChunk]
    float* q = scores + kChunk;                              // [d]
    const int chunk = blockIdx.x, query = blockIdx.y;
    for (int j = threadIdx.x; j < d; j += kThreads) q[j] = queries[int64_t(query) * d + j];
    __syncthreads();

    const int64_t row0 = int64_t(chunk) * kChunk;
    const int rows = n - row0 < kChunk ? static_cast<int>(n - row0) : kChunk;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = warp; r < kChunk; r += kWarps) {
        float acc = 0.f;
        if (r < rows) {
            const __half* row = gallery + (row0 + r) * d;
            const int pairs = d / 2;  // half2 loads need an even d and 4-byte alignment
            if ((d & 1) == 0) {
                const __half2* row2 = reinterpret_cast<const __half2*>(row);
                for (int p = lane; p < pairs; p += 32) {
                    const float2 v = __half22float2(row2[p]);
                    acc += v.x * q[2 * p] + v.y * q[2 * p + 1];
                }
            } else {
                for (int j = lane; j < d; j += 32) acc += __half2float(row[j]) * q[j];
            }
        }
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) {
            scores[r] = r < rows ? acc * factor[row0 + r] : -INFINITY;
            ids[r] = r < rows ? row0 + r : -1;
        }
    }
    __syncthreads();
    const int64_t out = (int64_t(query) * chunks + chunk) * k;
    block_select(scores, ids, kChunk, k, cand_scores + out, cand_ids + out);
}

__global__ void merge_select(float* cand_scores, int64_t* cand_ids, int chunks, int k,
                             float* out_scores, int64_t* out_ids) {
    extern __shared__ __align__(16) unsigned char smem[];
    int64_t* ids = reinterpret_cast<int64_t*>(smem);
    float* scores = reinterpret_cast<float*>(ids + kChunk);
    const int query = blockIdx.x;
    const int total = chunks * k;
    const float* cs = cand_scores + int64_t(query) * total;
    const int64_t* ci = cand_ids + int64_t(query) * total;
    __shared__ float carry_s[kMaxK];
    __shared__ int64_t carry_i[kMaxK];
    // Windows of kChunk candidates: the best k of each window lead the next one.
    int carried = 0, start = 0;
    while (true) {
        for (int i = threadIdx.x; i < carried; i += kThreads) { scores[i] = carry_s[i]; ids[i] = carry_i[i]; }
        const int take = min(kChunk - carried, total - start);
        for (int i = threadIdx.x; i < take; i += kThreads) {
            scores[carried + i] = cs[start + i];
            ids[carried + i] = ci[start + i];
        }
        __syncthreads();
        block_select(scores, ids, carried + take, k, carry_s, carry_i);
        carried = k;
        start += take;
        if (start >= total) break;
    }
    for (int i = threadIdx.x; i < k; i += kThreads) {
        out_scores[int64_t(query) * k + i] = carry_s[i];
        out_ids[int64_t(query) * k + i] = carry_i[i];
    }
}

template <typename T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t count = 0;
    explicit DeviceBuffer(size_t n) : count(n) {
        if (n) check(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
    }
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// An fp16 gallery copied to the GPU once, searched many times.
class CudaGallery {
public:
    CudaGallery(const py::array& data, const py::array& factor)
        : n_(data.ndim() == 2 ? data.shape(0) : 0),
          d_(data.ndim() == 2 ? static_cast<int>(data.shape(1)) : 0),
          rows_(static_cast<size_t>(n_) * d_),
          factor_(static_cast<size_t>(n_)) {
        if (data.ndim() != 2 || data.itemsize() != 2 || !(data.flags() & py::array::c_style))
            throw std::invalid_argument("data must be C-contiguous float16 [n, d]");
        if (factor.ndim() != 1 || factor.shape(0) != n_ || !py::isinstance<py::array_t<float>>(factor) ||
            !(factor.flags() & py::array::c_style))
            throw std::invalid_argument("factor must be C-contiguous float32 [n]");
        check(cudaMemcpy(rows_.ptr, data.data(), rows_.count * 2, cudaMemcpyHostToDevice), "upload rows");
        check(cudaMemcpy(factor_.ptr, factor.data(), factor_.count * 4, cudaMemcpyHostToDevice), "upload factors");
    }

    py::tuple search(const py::array& queries, int k) {
        if (queries.ndim() != 2 || queries.shape(1) != d_ || !py::isinstance<py::array_t<float>>(queries) ||
            !(queries.flags() & py::array::c_style))
            throw std::invalid_argument("queries must be C-contiguous float32 [b, d]");
        if (k < 1 || k > kMaxK) throw std::invalid_argument("k must be in 1..1024 on the CUDA path");
        const int64_t b = queries.shape(0);
        py::array_t<float> scores({b, int64_t(k)});
        py::array_t<int64_t> ids({b, int64_t(k)});
        if (b == 0) return py::make_tuple(scores, ids);
        // Normalise on the host: b x d is small, and it keeps the kernel's inner loop lean.
        std::vector<float> qn(static_cast<size_t>(b) * d_);
        const float* q = static_cast<const float*>(queries.data());
        for (int64_t i = 0; i < b; ++i) {
            double ss = 0;
            for (int j = 0; j < d_; ++j) ss += double(q[i * d_ + j]) * q[i * d_ + j];
            const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : 0.0;
            for (int j = 0; j < d_; ++j) qn[i * d_ + j] = static_cast<float>(q[i * d_ + j] * inv);
        }
        const int chunks = static_cast<int>((n_ + kChunk - 1) / kChunk);
        {
            py::gil_scoped_release nogil;
            run(qn, b, k, chunks, scores.mutable_data(), ids.mutable_data());
        }
        return py::make_tuple(scores, ids);
    }

    int64_t size() const { return n_; }
    int dim() const { return d_; }

private:
    void run(const std::vector<float>& qn, int64_t b, int k, int chunks, float* out_s, int64_t* out_i) {
        const int kk = k;
        DeviceBuffer<float> dq(qn.size()), cs(size_t(b) * chunks * kk), os(size_t(b) * kk);
        DeviceBuffer<int64_t> ci(size_t(b) * chunks * kk), oi(size_t(b) * kk);
        check(cudaMemcpy(dq.ptr, qn.data(), qn.size() * 4, cudaMemcpyHostToDevice), "upload queries");
        if (n_ > 0) {
            const size_t smem1 = kChunk * (sizeof(float) + sizeof(int64_t)) + d_ * sizeof(float);
            check(cudaFuncSetAttribute(score_select, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem1)), "smem attribute");
            score_select<<<dim3(chunks, static_cast<unsigned>(b)), kThreads, smem1>>>(
                rows_.ptr, factor_.ptr, n_, d_, dq.ptr, kk, cs.ptr, ci.ptr, chunks);
            check(cudaGetLastError(), "score_select");
            const size_t smem2 = kChunk * (sizeof(float) + sizeof(int64_t));
            check(cudaFuncSetAttribute(merge_select, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem2)), "smem attribute");
            merge_select<<<static_cast<unsigned>(b), kThreads, smem2>>>(cs.ptr, ci.ptr, chunks, kk, os.ptr, oi.ptr);
            check(cudaGetLastError(), "merge_select");
            check(cudaMemcpy(out_s, os.ptr, os.count * 4, cudaMemcpyDeviceToHost), "download scores");
            check(cudaMemcpy(out_i, oi.ptr, oi.count * 8, cudaMemcpyDeviceToHost), "download ids");
        } else {
            for (size_t i = 0; i < size_t(b) * kk; ++i) { out_s[i] = -INFINITY; out_i[i] = -1; }
        }
    }

    int64_t n_;
    int d_;
    DeviceBuffer<__half> rows_;
    DeviceBuffer<float> factor_;
};

int device_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace

PYBIND11_MODULE(_kernels_cuda, m) {
    m.doc() = "vqclip CUDA top-k (fp16 gallery); NOT YET RUN ON A GPU. Use vqclip.kernels.";
    m.def("device_count", &device_count, "Number of CUDA devices visible (0 when none).");
    py::class_<CudaGallery>(m, "CudaGallery")
        .def(py::init<const py::array&, const py::array&>(), py::arg("data"), py::arg("factor"))
        .def("search", &CudaGallery::search, py::arg("queries"), py::arg("k"))
        .def_property_readonly("size", &CudaGallery::size)
        .def_property_readonly("dim", &CudaGallery::dim);
}
