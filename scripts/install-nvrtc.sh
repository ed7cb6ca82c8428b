#!/usr/bin/env bash
# Install NVRTC (CUDA 13) from PyPI and print the folder holding libnvrtc.so.13.
# No GPU or CUDA toolkit needed: tests/nvrtc_compile.rs only compiles kernels.
#
#   dir=$(scripts/install-nvrtc.sh)        # last line of stdout is the lib folder
#   PINPOINT_NVRTC="$dir" cargo test --test nvrtc_compile
#
# (tests/nvrtc_compile.rs also finds the package by asking python3, so PINPOINT_NVRTC is
# optional when the same python3 is on PATH.) Installs into the user site when the system
# site is not writable. NVRTC_SPEC overrides the requirement (e.g. a pinned version, or a
# local wheel path).
set -euo pipefail
PY=${PYTHON:-python3}
SPEC=${NVRTC_SPEC:-"nvidia-cuda-nvrtc>=13,<14"}

find_dir() {
  "$PY" - <<'PYEOF'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(1)
for p in nvidia.__path__:
    for sub in sorted(os.listdir(p), reverse=True):   # cu13 before cu12
        d = os.path.join(p, sub, "lib")
        if os.path.isdir(d) and any(f.startswith("libnvrtc.so") for f in os.listdir(d)):
            print(d)
            raise SystemExit(0)
raise SystemExit(1)
PYEOF
}

if ! dir=$(find_dir); then
  if "$PY" -c 'import site, sys, os; p = site.getsitepackages()[0]; sys.exit(0 if os.access(p, os.W_OK) else 1)' 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check "$SPEC" >&2
  else
    "$PY" -m pip install --quiet --disable-pip-version-check --user "$SPEC" >&2
  fi
  dir=$(find_dir) || { echo "install-nvrtc: installed $SPEC but found no libnvrtc.so*" >&2; exit 1; }
fi
test -e "$dir/libnvrtc.so.13" || echo "install-nvrtc: warning: no libnvrtc.so.13 in $dir" >&2
echo "$dir"
