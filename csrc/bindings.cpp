// pybind11 bindings of vqclip._kernels. Thin on purpose: check the buffers at the
// boundary, release the GIL around the compute, return numpy arrays. All user-facing
// validation and conversion lives in engine/kernels.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "encode.h"
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

vq::Storage parse_storage(int storage) {
    if (storage < 0 || storage > 3) throw std::invalid_argument("storage code must be 0..3");
    return static_cast<vq::Storage>(storage);
}

const float* float_vector_or_null(const py::object& v, int64_t n, const char* what) {
    if (v.is_none()) return nullptr;
    const auto a = v.cast<py::array>();
    if (a.ndim() != 1 || a.shape(0) != n || !c_contiguous(a) || !py::isinstance<py::array_t<float>>(a))
        throw std::invalid_argument(std::string(what) + " must be a C-contiguous float32 array [n] or None");
    return static_cast<const float*>(a.data());
}

py::tuple topk(const py::array& queries, const py::list& segments, int storage, int64_t k,
               int threads, const std::string& simd_name) {
    const vq::Simd simd = parse_simd(simd_name);
    const auto st = parse_storage(storage);
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
        if (rows.ndim() != 2 || rows.shape(1) != d || !c_contiguous(rows) ||
            static_cast<size_t>(rows.itemsize()) != itemsize_of(st))
            throw std::invalid_argument("segment rows must be C-contiguous [n, d] in the storage dtype");
        // None: raw rows, normed in the same pass (one-shot)
        const float* factors = float_vector_or_null(pair[1], rows.shape(0), "segment factors");
        if (rows.shape(0) == 0) continue;
        segs.push_back({rows.data(), factors, rows.shape(0), first});
        first += rows.shape(0);
    }

    py::array_t<float> scores({b, k});
    py::array_t<int64_t> ids({b, k});
    const float* q = static_cast<const float*>(queries.data());
    float* s = scores.mutable_data();
    int64_t* ix = ids.mutable_data();
    int64_t bad;
    {
        py::gil_scoped_release nogil;
        bad = vq::topk_cosine(q, b, d, segs, st, k, threads, simd, s, ix);
    }
    return py::make_tuple(scores, ids, bad);
}

// Encodes float32 rows [n, d]; returns (data or None for float32, norms, scales or None,
// first non-finite row, first overflowing row), the rows -1 when there is none.
py::tuple encode(const py::array& rows, int storage, int threads, const std::string& simd_name) {
    const vq::Simd simd = parse_simd(simd_name);
    const auto st = parse_storage(storage);
    if (rows.ndim() != 2 || !py::isinstance<py::array_t<float>>(rows) || !c_contiguous(rows))
        throw std::invalid_argument("rows must be a C-contiguous float32 array [n, d]");
    const int64_t n = rows.shape(0), d = rows.shape(1);
    py::object data = py::none(), scales = py::none();
    void* dst = nullptr;
    float* sc = nullptr;
    if (st == vq::Storage::i8) {
        py::array_t<int8_t> a({n, d});
        dst = a.mutable_data();
        data = a;
        py::array_t<float> s(n);
        sc = s.mutable_data();
        scales = s;
    } else if (st != vq::Storage::f32) {  // float16 and bfloat16 bits
        py::array_t<uint16_t> a({n, d});
        dst = a.mutable_data();
        data = a;
    }
    py::array_t<float> norms(n);
    float* nm = norms.mutable_data();
    const float* x = static_cast<const float*>(rows.data());
    vq::EncodeStatus status;
    {
        py::gil_scoped_release nogil;
        status = vq::encode_rows(x, n, d, st, dst, nm, sc, threads, simd);
    }
    return py::make_tuple(data, norms, scales, status.nonfinite_row, status.overflow_row);
}

// L2 norms of stored rows [n, d] (times |scales| for int8); returns (norms, first bad row or -1).
py::tuple row_norms(const py::array& rows, int storage, const py::object& scales, int threads,
                    const std::string& simd_name) {
    const vq::Simd simd = parse_simd(simd_name);
    const auto st = parse_storage(storage);
    if (rows.ndim() != 2 || !c_contiguous(rows) || static_cast<size_t>(rows.itemsize()) != itemsize_of(st))
        throw std::invalid_argument("rows must be C-contiguous [n, d] in the storage dtype");
    const int64_t n = rows.shape(0), d = rows.shape(1);
    const float* sc = float_vector_or_null(scales, n, "scales");
    if ((st == vq::Storage::i8) != (sc != nullptr))
        throw std::invalid_argument("scales are required for int8 rows and only for them");
    py::array_t<float> norms(n);
    float* nm = norms.mutable_data();
    const void* data = rows.data();
    int64_t bad;
    {
        py::gil_scoped_release nogil;
        bad = vq::row_norms(data, st, n, d, sc, nm, threads, simd);
    }
    return py::make_tuple(norms, bad);
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
          "Top-k cosine of float32 queries [b, d] against (rows, factors or None) segments; "
          "returns (scores, ids, first raw row holding NaN/inf or -1).");
    m.def("encode", &encode, py::arg("rows"), py::arg("storage"), py::arg("threads"), py::arg("simd"),
          "Encodes float32 rows: (data or None, norms, scales or None, nonfinite row, overflow row).");
    m.def("row_norms", &row_norms, py::arg("rows"), py::arg("storage"), py::arg("scales"), py::arg("threads"),
          py::arg("simd"), "Norms of stored rows: (norms float32 [n], first non-finite row or -1).");
    m.def("stream_sum", &stream_sum, py::arg("array"), py::arg("threads"), py::arg("simd"),
          "Multi-threaded sum of a float32 array (read-bandwidth probe).");
    m.def("info", &info, "Compiled and CPU-supported SIMD paths, OpenMP, thread count.");
}
