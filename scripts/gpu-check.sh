#!/usr/bin/env bash
# One device run for the CUDA backend: kernel and model parity tests, the NVRTC compile
# test, a forward/decode timing in real shapes, and the PyTorch peer baseline, on one card.
#
# 1. Here (no GPU needed), build and stage everything the device needs into .gpu/
#    (git-ignored), stripped test binaries and the peer script:
#        scripts/gpu-check.sh --prepare
# 2. One device call, from the repository root:
#        run(command="bash scripts/gpu-check.sh", carry=[".gpu"], timeout_s=330)
#    It writes $OUT/gpu-check.json (summary) and $OUT/gpu-check.log (all output), and ends
#    with a short table. Budget: tests ~1 min, bench ~1 min, torch peer ~40 s (< 5 min).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  rm -rf .gpu && mkdir -p .gpu/bin
  cargo build --release --bin pinpoint
  cargo test --release --no-run --message-format=json \
      --test cuda_kernels --test nvrtc_compile --test cuda_bench >.gpu/build.json
  python3 - <<'PY'
import json, shutil, os
for line in open(".gpu/build.json"):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        dst = os.path.join(".gpu/bin", m["target"]["name"])
        shutil.copy(m["executable"], dst)
        print("staged", dst)
PY
  cp "$CARGO_TARGET_DIR/release/pinpoint" .gpu/bin/pinpoint
  strip .gpu/bin/* 2>/dev/null || true
  rm .gpu/build.json
  cp /work/shared/baselines/torch_peer.py .gpu/ 2>/dev/null || echo "note: no torch_peer.py to stage"
  du -sh .gpu
  exit 0
fi

# ---- on the device machine ----
OUT=${OUT:-$ROOT/.gpu/out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PINPOINT_HOME=/tmp/pinpoint-home        # PTX cache
export PINPOINT_REPO=$ROOT                     # fixtures (the binaries were built elsewhere)
export PINPOINT_REQUIRE_GPU=1                  # a missing GPU fails instead of skipping
export RUST_BACKTRACE=1
# The toolkit's NVRTC matches the driver (PTX from a newer NVRTC may not load).
if ls /usr/local/cuda/lib64/libnvrtc.so* >/dev/null 2>&1; then
  export PINPOINT_NVRTC=/usr/local/cuda/lib64
fi
: >"$LOG"
declare -A RC SECS

step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  echo "==== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  RC[$name]=$?
  SECS[$name]=$((SECONDS - t0))
  echo "==== $name: rc=${RC[$name]} in ${SECS[$name]}s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >>"$LOG" 2>&1
ls /usr/local/cuda/lib64/libnvrtc* >>"$LOG" 2>&1

if [[ ! -x .gpu/bin/cuda_kernels ]]; then
  echo "no staged binaries: run scripts/gpu-check.sh --prepare first" | tee -a "$LOG"
  exit 2
fi
step nvrtc_compile 90 .gpu/bin/nvrtc_compile --nocapture --test-threads=1
step cuda_kernels 150 .gpu/bin/cuda_kernels --nocapture --test-threads=1
PINPOINT_BENCH_OUT=$OUT/bench.json step cuda_bench 120 .gpu/bin/cuda_bench --ignored --nocapture --test-threads=1
if [[ -f .gpu/torch_peer.py ]]; then
  (cd "$OUT" && step torch_peer 120 python3 "$ROOT/.gpu/torch_peer.py")
fi

python3 - "$OUT" "$LOG" <<PY
import json, re, sys, os
out, log = sys.argv[1], sys.argv[2]
text = open(log, errors="replace").read()
res = {"steps": {}}
for name, rc, secs in re.findall(r"==== (\w+): rc=(\d+) in (\d+)s", text):
    res["steps"][name] = {"rc": int(rc), "seconds": int(secs)}
res["errors"] = sorted({float(e) for e in re.findall(r"rel err ([0-9.e+-]+)", text)})[-5:]
res["worst_rel_err"] = res["errors"][-1] if res["errors"] else None
res["skipped"] = len(re.findall(r"SKIPPED", text))
res["failed_tests"] = sorted(set(re.findall(r"thread '(\w+)' \(\d+\) panicked", text)))
for f in ("bench.json", "torch_baseline.json"):
    p = os.path.join(out, f)
    if os.path.exists(p):
        try: res[f] = json.load(open(p))
        except Exception as e: res[f] = f"unreadable: {e}"
json.dump(res, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print("\nstep            rc   seconds")
for k, v in res["steps"].items(): print(f"{k:<15} {v['rc']:<4} {v['seconds']}")
print("worst rel err:", res["worst_rel_err"], " skipped:", res["skipped"], " failed:", res["failed_tests"])
PY
grep -E "^test .* (ok|FAILED)|panicked|rel err [0-9.e+-]+ >|SKIPPED" "$LOG" | tail -40
