#!/usr/bin/env bash
# GPU check for vqclip's backends: parity tests + encoder benchmark on an NVIDIA GPU.
#
# NOT YET RUN: written in a task without a GPU machine. Target machine: one NVIDIA GPU, no
# network, PyTorch with CUDA, CuPy, Triton, nvcc and ONNX Runtime (CPU build) installed;
# tensorrt and onnxruntime-gpu absent (their steps then skip, each saying what is missing).
#
# Usage, from anywhere (a Python with the repo's deps; PYTHON picks it, default python3):
#   bash benchmarks/gpu_check.sh [out_dir]          # default out_dir: benchmarks/results
# Env: GPU_CHECK_COMPILE=1 also times torch.compile (adds minutes of compilation).
#
# Steps, each under its own time limit so the whole run stays under 10 minutes:
#   1. what the machine has (GPU, torch CUDA, ORT providers, tensorrt)        ~10 s
#   2. tests/backends: torch CUDA fp32/fp16/bf16 with and without CUDA graphs,
#      torch.compile, ORT CUDA/TensorRT providers and native TensorRT if present <= 120 s
#   3. bench_encoders.py on CUDA: transformers eager fp32, vqclip torch fp32/fp16/bf16,
#      fp16 + CUDA graphs, ORT CPU fp32/fp16/int8 (+ GPU providers if present),
#      batches 1, 8, 32, image and text encoders, ViT-B/32 random weights (and the
#      bundled shapes-clip when the zoo has it)                               <= 160 s
#   4. the CUDA top-k kernels: benchmarks/gpu_check_topk.sh from the kernels work,
#      when present                                                            <= 110 s
#   5. generation on CUDA: its tests, then steps/s beside VQGAN-CLIP's step at ViT-B/32 +
#      f16-16384 256x256 cutn 32 (fp32 and autocast), 8 jobs batched vs one by one, and
#      peak GPU memory at 256 and 512 (the peers report 10 GB at 512)           <= 140 s
# Writes $OUT/gpu_check_encoders.json, gpu_check_generate.json (and the top-k step's JSON); prints a summary and
# exits non-zero if any step failed or ran out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
START=$SECONDS
declare -a SUMMARY=()

step() {  # step NAME LIMIT_S CMD...: run with a time limit, record the outcome, never abort the script
  local name="$1" limit="$2"; shift 2
  echo; echo "=== $name (limit ${limit}s, at $((SECONDS - START))s) ==="
  local t0=$SECONDS rc=0
  timeout --signal=TERM --kill-after=5 "$limit" "$@" || rc=$?
  local verdict="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED rc=$rc"; fi
  SUMMARY+=("$(printf '%-34s %-14s %4ss' "$name" "$verdict" "$((SECONDS - t0))")")
}

step "1 machine" 30 "$PY" - <<'PYEOF'
import importlib.util, torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "sm", f"{p.major}{p.minor}")
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("tensorrt", "present" if importlib.util.find_spec("tensorrt") else "absent (TensorRT steps skip)")
print("transformers", "present" if importlib.util.find_spec("transformers") else "absent (peer rows skip)")
from vqclip.backends import backend_status
print("backends", backend_status())
PYEOF
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader 2>/dev/null || true

# CUDA tests are the ones that skip on a CPU machine; here they must run (-rs lists any skip).
step "2 backend tests" 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/backends

BENCH=(--device cuda --models shapes-clip,vit-b-32 --batches 1,8,32 --precisions fp32,fp16,int8
       --rounds 2 --seconds 1.5 --max-iters 40 --no-targets --json "$OUT/gpu_check_encoders.json")
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then BENCH+=(--compile); fi
step "3 encoder benchmark" 160 "$PY" benchmarks/bench_encoders.py "${BENCH[@]}"

# ---------------------------------------------------------------------------------------------
# CUDA TOP-K HOOK: the kernels work provides benchmarks/gpu_check_topk.sh (build with nvcc,
# test, time). Called here when it is in the tree; until then this step says it is missing.
if [ -f benchmarks/gpu_check_topk.sh ]; then
  step "4 CUDA top-k kernels" 110 bash benchmarks/gpu_check_topk.sh "$OUT"
else
  echo; echo "=== 4 CUDA top-k kernels: SKIPPED, benchmarks/gpu_check_topk.sh is not in this tree ==="
  SUMMARY+=("$(printf '%-34s %-14s' "4 CUDA top-k kernels" "MISSING HOOK")")
fi
# ---------------------------------------------------------------------------------------------

"$PY" -c "import kornia" 2>/dev/null || echo "kornia is missing: the VQGAN-CLIP baseline rows need it (pip install kornia)"
step "5 generation tests" 40 "$PY" -m pytest -q -rs -p no:cacheprovider tests/jobs/generate -k "cuda or memory"
step "5 generation benchmark" 100 "$PY" benchmarks/bench_generate.py speed --device cuda --configs vit256,vit512 \
  --batched vit256 --steps 5 --memory --json "$OUT/gpu_check_generate.json"

echo; echo "=== summary (total $((SECONDS - START))s, limit 590s) ==="
failed=0
for line in "${SUMMARY[@]}"; do
  echo "  $line"
  case "$line" in *FAILED*|*"TIMED OUT"*) failed=1 ;; esac
done
exit $failed
