#!/usr/bin/env bash
# `pinpoint bench --device cuda` on every shape, in one device call (~1 min expected,
# each shape capped). Uses the binary staged by scripts/gpu-check.sh --prepare:
#   here:   scripts/gpu-check.sh --prepare
#   device: run(command="bash scripts/gpu-bench.sh", carry=[".gpu"], timeout_s=240)
# Writes $OUT/bench-<shape>.json (JSON arrays of rows) and $OUT/bench.log.
# ITEMS=gemm,forward,patching,decode,train adds the SPT step once CUDA backward exists.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT"
LOG=$OUT/bench.log
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PINPOINT_HOME=/tmp/pinpoint-home   # PTX cache, shared by the runs below
export RUST_BACKTRACE=1
if ls /usr/local/cuda/lib64/libnvrtc.so* >/dev/null 2>&1; then
  export PINPOINT_NVRTC=/usr/local/cuda/lib64   # the toolkit's NVRTC matches the driver
fi
P=${P:-.gpu/bin/pinpoint}
ITEMS=${ITEMS:-gemm,forward,patching,decode}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
run() {  # run LIMIT NAME ARGS...
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$P" bench "$@" --device cuda --out "$OUT/bench-$name.json" 2>&1 | tee -a "$LOG"
  echo "==== $name: rc=${PIPESTATUS[0]} in $((SECONDS - t0))s" | tee -a "$LOG"
}
run 45 smollm2-135m "$ITEMS" --shape smollm2-135m --logits last --reps 3 --new-tokens 16
run 60 llama2-7b "$ITEMS" --shape llama2-7b --logits last --reps 3 --new-tokens 16
run 60 mistral-7b "$ITEMS" --shape mistral-7b --logits last --reps 3 --new-tokens 16
# The engine GEMM on the 7B forward and sweep, for comparison with cuBLAS above.
run 45 llama2-7b-engine forward,patching --shape llama2-7b --gemm engine --logits last --reps 3 --oracle-heads 0
