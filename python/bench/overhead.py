"""The Python layer's overhead (a benchmark, not a test): the same engine calls timed from
Python and from Rust (`pinpoint bench` / `pinpoint diagnose`), alternated so that load
from other processes falls on both alike.

    python python/bench/overhead.py [--model DIR] [--rounds 3] [--pairs 8]

1. An 8 x 128 forward with logits at every position: `model.run_with_cache(tokens,
   names=[])` against `pinpoint bench forward --batch 8 --seq 128` (its median).
2. The path-patching sweep: `pinpoint.path_patching(model, n=P)`'s wall time against the
   engine's own clock for the clean runs + sweep inside that call, and against
   `pinpoint diagnose --n P` (its printed clean + sweep seconds).
3. The cache's copies: `run_with_cache` of every hook_z, counted.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import pinpoint
from pinpoint import _pinpoint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PINPOINT_BIN", ROOT / "target" / "release" / "pinpoint"))

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--pairs", type=int, default=8)
args = ap.parse_args()
os.environ.setdefault("PINPOINT_PROGRESS", "0")

model = pinpoint.Model.load(args.model)
margs = ["--model", model.path]
rng = np.random.default_rng(0)
tokens = rng.integers(0, model.cfg.d_vocab, size=(8, 128))


def rust_forward() -> float:
    r = subprocess.run([str(BIN), "bench", "forward", *margs, "--batch", "8", "--seq", "128",
                        "--reps", "3"], capture_output=True, text=True, check=True)
    row = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    return row["median_s"]


def py_forward() -> float:
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        model.run_with_cache(tokens, names=[])
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def rust_diagnose() -> float:
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([str(BIN), "diagnose", *margs, "--n", str(args.pairs), "--out", d],
                           capture_output=True, text=True, check=True)
    m = re.search(r"clean runs ([\d.]+) s, sweep ([\d.]+) s", r.stderr)
    return float(m.group(1)) + float(m.group(2))


def py_diagnose() -> tuple:
    t = time.perf_counter()
    res = pinpoint.path_patching(model, n=args.pairs)
    return time.perf_counter() - t, res.seconds_clean + res.seconds_sweep


model.run_with_cache(tokens, names=[])  # warm-up
rows = {"forward_py": [], "forward_rust": [], "pp_py_wall": [], "pp_py_engine": [],
        "pp_rust": []}
for i in range(args.rounds):
    # Alternate the order each round.
    order = [0, 1] if i % 2 == 0 else [1, 0]
    for o in order:
        if o == 0:
            rows["forward_py"].append(py_forward())
        else:
            rows["forward_rust"].append(rust_forward())
    for o in order:
        if o == 0:
            w, e = py_diagnose()
            rows["pp_py_wall"].append(w)
            rows["pp_py_engine"].append(e)
        else:
            rows["pp_rust"].append(rust_diagnose())

med = {k: statistics.median(v) for k, v in rows.items()}
print(json.dumps({"rounds": args.rounds, "pairs": args.pairs, "median_s": med,
                  "all_s": rows}, indent=1))
print(f"8x128 forward: python {med['forward_py']:.3f} s vs rust {med['forward_rust']:.3f} s "
      f"({100 * (med['forward_py'] / med['forward_rust'] - 1):+.1f}%)")
print(f"path patching ({args.pairs} pairs): python wall {med['pp_py_wall']:.2f} s, engine "
      f"inside it {med['pp_py_engine']:.2f} s, CLI {med['pp_rust']:.2f} s "
      f"({100 * (med['pp_py_wall'] / med['pp_rust'] - 1):+.1f}% vs CLI)")

names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
before = _pinpoint.activation_copies()
model.run_with_cache(tokens, names=names)
print(f"run_with_cache of every hook_z ({len(names)} points): "
      f"{_pinpoint.activation_copies() - before} activation copies")
