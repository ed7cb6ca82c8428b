"""Shared fixtures: the repo's tiny HF models (tests/fixtures, written by
scripts/make_fixtures.py from HF transformers), a tiny model with a word-level tokenizer and
chat template (as tests/bad_input/mod.rs builds for the CLI tests), and the CLI binary."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pinpoint

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_MODELS = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-llama3",
    "tiny-linear",
    "tiny-dynamic",
    "tiny-yarn",
    "tiny-qwen2",
]

WORDS = ["[UNK]", "<s>", "</s>", "user", "assistant", "system", ":", "?", ".", ",", "!",
         "yes", "no", "are", "you", "sure", "i", "think", "that", "is", "right", "wrong",
         "the", "answer", "what", "capital", "of", "france", "paris", "apologies", "a", "b",
         "c", "d", "1", "2", "3", "4"]
TEMPLATE = ("{% for m in messages %}<s> {{ m.role }} : {{ m.content }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<s> assistant : {% endif %}")


def read_safetensors(path: Path) -> dict:
    """A minimal safetensors reader (F32, F64, I64, I32), independent of the engine."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    kinds = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=kinds[t["dtype"]]).reshape(t["shape"])
    return out


def cli_bin() -> Path:
    p = Path(os.environ.get("PINPOINT_BIN", ROOT / "target" / "release" / "pinpoint"))
    if not p.exists():
        pytest.fail(f"{p} not found: build it first (cargo build --release)")
    return p


def run_cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The CLI on the same inputs; fails the test with its stderr when it fails."""
    r = subprocess.run([str(cli_bin()), *map(str, args)], cwd=cwd, capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        pytest.fail(f"pinpoint {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


def tokenizer_json() -> dict:
    vocab = {w: i for i, w in enumerate(WORDS)}
    added = [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, w in enumerate(WORDS[:3])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}


def pair_line(r: str, c: str) -> dict:
    def side(t):
        return [{"role": "user", "content": "what is the capital of france ?"},
                {"role": "assistant", "content": "paris ."}, {"role": "user", "content": t}]
    return {"reference": side(r), "counterfactual": side(c)}


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> Path:
    """A scratch folder: m/ (tiny-llama with a tokenizer), pairs.jsonl, heads.json,
    train.jsonl, q.jsonl."""
    root = tmp_path_factory.mktemp("env")
    m = root / "m"
    m.mkdir()
    for f in ["config.json", "model.safetensors", "generation_config.json"]:
        shutil.copy(FIXTURES / "tiny-llama" / f, m / f)
    # A long context (plain RoPE: the math is the same at any length): the CLI refuses
    # prompts past max_position_embeddings and ends generation there, and the three-turn
    # protocol and the long Ctrl-C generation below need more than the fixture's 64.
    cfg = json.loads((m / "config.json").read_text())
    cfg["max_position_embeddings"] = 1 << 20
    (m / "config.json").write_text(json.dumps(cfg))
    (m / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    (m / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}))
    pairs = [pair_line("i think that is wrong . are you sure ?", "are you sure ?"),
             pair_line("that is wrong . are you sure ?", "is that right ?"),
             pair_line("i think the answer is b . are you sure ?", "are you sure ?")]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    conv = lambda q, a: {"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]}
    data = [conv("what is the capital of france ?", "paris ."),
            conv("are you sure ?", "yes , i think that is right .")]
    (root / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in data))
    heads = [{"layer": i // 4, "head": i % 4, "score": s, "rank": i + 1}
             for i, s in enumerate([-3.0, -2.0, -1.0, 0.5])]
    hj = {"model": {"architecture": "LlamaForCausalLM", "num_hidden_layers": 3,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16,
                    "hidden_size": 64}, "heads": heads}
    (root / "heads.json").write_text(json.dumps(hj))
    qs = [{"id": "q1", "question": "what is the capital of france ?", "answers": ["paris"]},
          {"id": "q2", "question": "what is 1 ?", "choices": ["1", "2", "3", "4"],
           "answer": "A"}]
    (root / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    return root


@pytest.fixture(scope="session")
def tiny(env) -> "pinpoint.Model":
    return pinpoint.Model.load(env / "m")
