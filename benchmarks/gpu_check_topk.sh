#!/usr/bin/env bash
# Build, test and time the CUDA top-k (vqclip._kernels_cuda) on a GPU machine.
# Usage (repo root, a Python with numpy + pybind11 + pytest, nvcc on PATH or CUDA_HOME):
#   bash benchmarks/gpu_check_topk.sh [out_dir]
# Prints the test result and a timing table; writes gpu_check_topk.json to out_dir
# (default benchmarks/results). The CUDA path has NOT YET RUN ON A GPU before this.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
VQCLIP_BUILD_CUDA=1 VQCLIP_CUDA_ARCHS="${VQCLIP_CUDA_ARCHS:-90}" "$PY" setup.py build_ext --inplace -q
"$PY" -m pytest -q tests/test_kernels.py -k "cuda or float32_matches" -p no:cacheprovider
OUT="$OUT" "$PY" - <<'PYEOF'
import json, os, time, statistics
import numpy as np
from vqclip import kernels as K

rng = np.random.default_rng(0)
rows = []
for n, d in [(1_000_000, 512)]:
    g = rng.standard_normal((n, d), dtype=np.float32)
    gal = K.Gallery.from_rows(g, "float16")
    cg = K.CudaGallery(gal)
    for b in (1, 16, 256):
        q = rng.standard_normal((b, d), dtype=np.float32)
        for name, fn in [("cuda-float16", lambda: cg.search(q, 10)), ("cpu-float16", lambda: gal.search(q, 10))]:
            fn()
            ts = []
            for _ in range(5):
                t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
            rows.append({"n": n, "d": d, "b": b, "k": 10, "method": name, "ms": statistics.median(ts)})
            print(f"{n:>8} {d:>4} {b:>4}  {name:<13} {rows[-1]['ms']:9.2f} ms")
        s_gpu, i_gpu = cg.search(q, 10)
        s_cpu, i_cpu = gal.search(q, 10)
        agree = float((i_gpu == i_cpu).mean())
        print(f"  ids equal to the CPU kernel: {agree:.4f}; max |score diff| {np.abs(s_gpu - s_cpu).max():.2e}")
        rows.append({"n": n, "d": d, "b": b, "ids_equal_cpu": agree})
path = os.path.join(os.environ["OUT"], "gpu_check_topk.json")
with open(path + ".tmp", "w") as f:
    json.dump({"results": rows}, f, indent=1)
os.replace(path + ".tmp", path)
print("wrote", path)
PYEOF
