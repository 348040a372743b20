// pybind11 bindings of vqclip._kernels. Thin on purpose: check the buffers at the
// boundary, release the GIL around the compute, return numpy arrays. All user-facing
// validation and conversion lives in engine/kernels.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "topk.h"

namespace py = pybind11;

namespace {

vq::Simd parse_simd(const std::string& name) {
    if (name == "scalar") return vq::Simd::scalar;
    if (name == "avx2") return vq::Simd::avx2;
    if (name == "avx512") return vq::Simd::avx512;
    throw std::invalid_argument("unknown SIMD path '" + name + "'; expected scalar, avx2 or avx512");
}

size_t itemsize_of(vq::Storage st) {
    switch (st) {
        case vq::Storage::f32: return 4;
        case vq::Storage::f16:
        case vq::Storage::bf16: return 2;
        case vq::Storage::i8: return 1;
    }
    throw std::invalid_argument("unknown storage code");
}

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

py::tuple topk(const py::array& queries, const py::list& segments, int storage, int64_t k,
               int threads, const std::string& simd_name) {
    const vq::Simd simd = parse_simd(simd_name);
    if (storage < 0 || storage > 3) throw std::invalid_argument("storage code must be 0..3");
    const auto st = static_cast<vq::Storage>(storage);
    if (k < 1) throw std::invalid_argument("k must be >= 1");
    if (queries.ndim() != 2 || !py::isinstance<py::array_t<float>>(queries) || !c_contiguous(queries))
        throw std::invalid_argument("queries must be a C-contiguous float32 array [b, d]");
    const int64_t b = queries.shape(0), d = queries.shape(1);
    if (d < 1) throw std::invalid_argument("queries must have d >= 1");

    // Take the buffers while holding the GIL; the caller's references keep them alive.
    std::vector<vq::Segment> segs;
    int64_t first = 0;
    for (const py::handle item : segments) {
        const auto pair = item.cast<py::tuple>();
        if (pair.size() != 2) throw std::invalid_argument("each segment must be (rows, factors)");
        const auto rows = pair[0].cast<py::array>();
        const auto factor = pair[1].cast<py::array>();
        if (rows.ndim() != 2 || rows.shape(1) != d || !c_contiguous(rows) ||
            static_cast<size_t>(rows.itemsize()) != itemsize_of(st))
            throw std::invalid_argument("segment rows must be C-contiguous [n, d] in the storage dtype");
        if (factor.ndim() != 1 || factor.shape(0) != rows.shape(0) || !c_contiguous(factor) ||
            !py::isinstance<py::array_t<float>>(factor))
            throw std::invalid_argument("segment factors must be C-contiguous float32 [n]");
        if (rows.shape(0) == 0) continue;
        segs.push_back({rows.data(), static_cast<const float*>(factor.data()), rows.shape(0), first});
        first += rows.shape(0);
    }

    py::array_t<float> scores({b, k});
    py::array_t<int64_t> ids({b, k});
    const float* q = static_cast<const float*>(queries.data());
    float* s = scores.mutable_data();
    int64_t* ix = ids.mutable_data();
    {
        py::gil_scoped_release nogil;
        vq::topk_cosine(q, b, d, segs, st, k, threads, simd, s, ix);
    }
    return py::make_tuple(scores, ids);
}

double stream_sum(const py::array& a, int threads, const std::string& simd_name) {
    const vq::Simd simd = parse_simd(simd_name);
    if (!py::isinstance<py::array_t<float>>(a) || !c_contiguous(a))
        throw std::invalid_argument("stream_sum needs a C-contiguous float32 array");
    const float* p = static_cast<const float*>(a.data());
    const int64_t n = a.size();
    py::gil_scoped_release nogil;
    return vq::stream_sum(p, n, threads, simd);
}

py::dict info() {
    py::dict out;
    py::list compiled, supported;
    compiled.append("scalar");
    supported.append("scalar");
    if (vq::ops_avx2()) {
        compiled.append("avx2");
        if (vq::cpu_has_avx2()) supported.append("avx2");
    }
    if (vq::ops_avx512()) {
        compiled.append("avx512");
        if (vq::cpu_has_avx512()) supported.append("avx512");
    }
    out["best"] = vq::simd_name(vq::best_simd());
    out["compiled"] = compiled;
    out["supported"] = supported;
    out["openmp"] = vq::have_openmp();
    out["max_threads"] = vq::max_threads();
    return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "vqclip fused cosine + top-k kernels (use vqclip.kernels, not this module)";
    m.def("topk", &topk, py::arg("queries"), py::arg("segments"), py::arg("storage"), py::arg("k"),
          py::arg("threads"), py::arg("simd"),
          "Top-k cosine of float32 queries [b, d] against (rows, factors) segments.");
    m.def("stream_sum", &stream_sum, py::arg("array"), py::arg("threads"), py::arg("simd"),
          "Multi-threaded sum of a float32 array (read-bandwidth probe).");
    m.def("info", &info, "Compiled and CPU-supported SIMD paths, OpenMP, thread count.");
}
