#!/usr/bin/env bash
# The Python package's environment: a venv (default .venv-py; $1 to choose) with maturin,
# numpy, pytest, and tqdm and matplotlib (optional for users: progress bars, heatmaps),
# then the package itself built from python/ (`pip install ./python`, an abi3 wheel).
# Prints the venv's python as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-py}"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" -m pip install -q "maturin>=1.7,<2" numpy pytest tqdm matplotlib >&2
"$venv/bin/python" -m pip install -q ./python >&2
echo "$(cd "$venv" && pwd)/bin/python"
