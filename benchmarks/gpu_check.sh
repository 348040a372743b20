#!/usr/bin/env bash
# The GPU check: what the machine has, the CUDA top-k kernels built and tested, the GPU tests,
# then `vqclip bench --device cuda --quick`; everything written under one folder.
#
# For the lent GPU machines: one NVIDIA GPU, no network, PyTorch with CUDA, CuPy, Triton, nvcc
# and ONNX Runtime (CPU build); tensorrt and onnxruntime-gpu are absent there, so their tests
# and rows skip, each with a line naming what is missing.
#
# Usage (repository root or anywhere; PYTHON picks the interpreter, default python3):
#   bash benchmarks/gpu_check.sh [OUT]        # default OUT: gpu-check (made if missing)
# Writes OUT/build.txt, OUT/machine.txt, OUT/kernels.txt, OUT/tests.txt and OUT/bench/ (report.json, report.md,
# plots); prints a summary; exits non-zero if a step failed or ran out of time. Each step has a
# time limit, and the limits add up to 470 s, so the whole check ends within 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/build/gpu-check-pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
START=$SECONDS
declare -a SUMMARY=()

step() {  # step NAME LIMIT_S LOG CMD...: run with a time limit, log to OUT/LOG, never abort the script
  local name="$1" limit="$2" logf="$OUT/$3"; shift 3
  echo; echo "=== $name (limit ${limit}s, at $((SECONDS - START))s) ==="
  local t0=$SECONDS rc=0
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > >(tee -a "$logf") 2>&1 || rc=$?
  local verdict="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED rc=$rc"; fi
  SUMMARY+=("$(printf '%-28s %-14s %4ss' "$name" "$verdict" "$((SECONDS - t0))")")
}

# 0. Build the extensions here (the CPU kernels, and the CUDA top-k with nvcc), then make vqclip
# importable without installing: a package folder of links, mapped as setup.py's package_dir maps.
step "0 build (CPU + CUDA kernels)" 90 build.txt env VQCLIP_BUILD_CUDA=1 \
  VQCLIP_CUDA_ARCHS="${VQCLIP_CUDA_ARCHS:-90}" "$PY" setup.py -q build_ext --inplace
PKG=build/gpu-check-pkg/vqclip
rm -rf "$PKG" && mkdir -p "$PKG"
for f in engine/*; do ln -sfn "$PWD/$f" "$PKG/"; done
ln -sfn "$PWD/export" "$PKG/export"
ln -sfn "$PWD/benchmarks" "$PKG/bench"
"$PY" -c "import vqclip.kernels, vqclip.bench" || { echo "vqclip does not import: see $OUT/build.txt"; exit 2; }

step "1 machine" 20 machine.txt "$PY" - <<'PYEOF'
import importlib.util, torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "sm", f"{p.major}{p.minor}")
print("onnxruntime", ort.__version__, ort.get_available_providers())
for pkg in ("tensorrt", "cupy", "triton", "transformers", "faiss", "kornia", "matplotlib", "fastapi"):
    print(pkg, "present" if importlib.util.find_spec(pkg) else "absent (its rows and tests skip)")
from vqclip.backends import backend_status
print("backends", backend_status())
PYEOF
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader 2>&1 | tee -a "$OUT/machine.txt"

# 2. The CUDA top-k kernels against the CPU kernels.
step "2 CUDA kernel tests" 60 kernels.txt "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels.py -k cuda

# 3. The tests that skip on a CPU machine: CUDA backends, generation on CUDA, the exported generation
# step on ONNX Runtime's CUDA provider (without onnxruntime-gpu: its one-line refusal) (-rs lists any skip).
step "3 GPU tests" 120 tests.txt "$PY" -m pytest -q -rs -p no:cacheprovider tests/backends tests/jobs/generate \
  -k "cuda or gpu or tensorrt"

# 4. The benchmark, on the GPU, every job, at quick sizes.
step "4 vqclip bench --device cuda" 180 bench.txt "$PY" -m vqclip.cli bench --device cuda --quick \
  --precision fp32,fp16,int8 --out "$OUT/bench"

echo; echo "=== summary (total $((SECONDS - START))s; limits 470s) ===" | tee -a "$OUT/summary.txt"
failed=0
for line in "${SUMMARY[@]}"; do
  echo "  $line" | tee -a "$OUT/summary.txt"
  case "$line" in *FAILED*|*"TIMED OUT"*) failed=1 ;; esac
done
exit $failed
