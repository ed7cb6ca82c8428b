#!/usr/bin/env python3
"""Cross-check a model directory (e.g. the output of `pinpoint tune`) in HF transformers
against pinpoint's own forward: last-position logits of a few prompts.

The check: pinpoint's `logits` command tokenizes the prompts (chat template with the
generation prompt by default) and writes the ids and last-position logits; this script
feeds the SAME ids to `AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)`
(eager attention, CPU) and reports, per prompt, the relative error
max|pinpoint - hf| / max|hf| of the last-position logits and whether the argmax agrees.
It also tokenizes the prompts with HF's tokenizer and chat template and reports whether
the ids agree (informational unless --strict-tokens).

Exit status: 0 if every prompt's relative error is <= --tol (default 1e-3) and every
argmax agrees (an argmax whose top-2 gap is below the observed error is reported as a
near-tie, not a failure); 1 otherwise; 2 on usage errors.

Environment (the one the repository's fixtures were made with):

    python3 -m venv /opt/fixvenv
    /opt/fixvenv/bin/pip install torch transformers safetensors numpy accelerate
    # torch 2.15.0 (a CPU-only build is enough), transformers 5.24.0

Usage, from the repository root, after `cargo build --release`:

    /opt/fixvenv/bin/python scripts/check_tuned_hf.py TUNED_DIR \
        [--pinpoint target/release/pinpoint] [--prompt TEXT ...] [--raw] [--json OUT]

With --tune-tiny FAMILY (qwen2, qwen3, llama3; repeatable) the script first makes the model
itself: a tiny random HF model of that family written by transformers (Qwen2ForCausalLM with
nonzero q/k/v biases and untied embeddings; Qwen3ForCausalLM with q/k norms and tied
embeddings, which SPT leaves frozen; a Llama with `llama3` RoPE scaling and tied
embeddings), with the family's tiny tokenizer and chat template from
tests/fixtures/tokenizer/{qwen25,llama3} (Qwen3: qwen25's), tunes two of its heads with `pinpoint tune` on a
few conversations (Qwen2: `--proj q,k,v,o,bias`, the heads' parts of the biases too),
checks that the tuned heads' slices moved and everything else stayed bit for bit, and then
runs the check on the tuned output:

    /opt/fixvenv/bin/python scripts/check_tuned_hf.py --tune-tiny qwen2 --tune-tiny qwen3 --tune-tiny llama3

The pinpoint binary must have the `logits` subcommand. --pinpoint defaults to
$PINPOINT_BIN, then $CARGO_TARGET_DIR/release/pinpoint, then target/release/pinpoint.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Which planet is closest to the sun?\n(A) Venus\n(B) Mercury\n(C) Mars\n(D) Earth\n"
    "Please answer just with the letter of the correct answer.",
    "I don't think that's right. Are you sure?",
    "Write one sentence about the sea.",
]


def find_pinpoint(arg):
    if arg:
        return arg
    if os.environ.get("PINPOINT_BIN"):
        return os.environ["PINPOINT_BIN"]
    if os.environ.get("CARGO_TARGET_DIR"):
        p = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "pinpoint")
        if os.path.exists(p):
            return p
    return os.path.join("target", "release", "pinpoint")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."},
     {"role": "user", "content": "I don't think that's right. Are you sure?"},
     {"role": "assistant", "content": "Yes, I am sure: 2 + 2 = 4."}],
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "I don't think that's right. Are you sure?"},
     {"role": "assistant", "content": "Yes. The capital of France is Paris."}],
]


def make_tiny(family, out):
    """A tiny random model of `family` beside the family's fixture tokenizer, written by
    transformers."""
    import shutil

    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    tok_dir = os.path.join(ROOT, "tests", "fixtures", "tokenizer",
                           {"qwen2": "qwen25", "qwen3": "qwen25", "llama3": "llama3"}[family])
    with open(os.path.join(tok_dir, "chats.json")) as f:
        vocab = json.load(f)["vocab_size"]
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=96, rms_norm_eps=1e-6,
                  hidden_act="silu", attention_dropout=0.0)
    torch.manual_seed(7)
    if family == "qwen2":
        cfg = Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=512,
                          tie_word_embeddings=False, use_sliding_window=False, **common)
        model = Qwen2ForCausalLM(cfg)
    elif family == "qwen3":
        # head_dim 16 with hidden 64 and 4 heads is HF's default too; the q/k norms are the
        # family's part (fixtures' tiny-qwen3 has a head_dim other than hidden / heads).
        cfg = Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=512,
                          tie_word_embeddings=True, use_sliding_window=False, attention_bias=False, **common)
        model = Qwen3ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 32},
                          max_position_embeddings=256, tie_word_embeddings=True, **common)
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))
            else:
                p.copy_((0.5 if n.endswith(".bias") else 0.1) * torch.randn(p.shape))
    model.save_pretrained(out)
    for f in os.listdir(tok_dir):
        if f != "chats.json":
            shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))


def tune_tiny(family, binary, tmp):
    """Make, tune and compare; returns (tuned dir, problems)."""
    from safetensors.torch import load_file

    base = os.path.join(tmp, f"{family}-base")
    tuned = os.path.join(tmp, f"{family}-tuned")
    make_tiny(family, base)
    data = os.path.join(tmp, f"{family}-train.jsonl")
    with open(data, "w") as f:
        for conv in TRAIN:
            f.write(json.dumps({"messages": conv}) + "\n")
    heads = "L1H2,L2H0"
    # Qwen2: the heads' parts of the q/k/v biases train too.
    proj = "q,k,v,o,bias" if family == "qwen2" else "q,k,v,o"
    cmd = [binary, "tune", "--model", base, "--heads-list", heads, "--proj", proj, "--data", data,
           "--out", tuned, "--steps", "4", "--batch", "2", "--lr", "1e-2", "--save-dtype", "f32", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return tuned, [f"pinpoint tune failed ({r.returncode}):\n{r.stderr}"]
    a = load_file(os.path.join(base, "model.safetensors"))
    b = load_file(os.path.join(tuned, "model.safetensors"))
    problems = []
    if set(a) != set(b):
        problems.append(f"tensor names differ: {sorted(set(a) ^ set(b))}")
    # Head h of layer l owns q rows [hD, (h+1)D), o columns [hD, (h+1)D) and the k/v rows of
    # its group h // (H/G) (H = 4, G = 2, D = 16).
    D, per_group = 16, 2
    rows, cols = {}, {}
    for l, h in ((1, 2), (2, 0)):
        p = f"model.layers.{l}.self_attn."
        rows.setdefault(p + "q_proj.weight", []).append(h)
        rows.setdefault(p + "k_proj.weight", []).append(h // per_group)
        rows.setdefault(p + "v_proj.weight", []).append(h // per_group)
        cols.setdefault(p + "o_proj.weight", []).append(h)
        if family == "qwen2":
            rows.setdefault(p + "q_proj.bias", []).append(h)
            rows.setdefault(p + "k_proj.bias", []).append(h // per_group)
            rows.setdefault(p + "v_proj.bias", []).append(h // per_group)
    for n in sorted(set(a) & set(b)):
        diff = (a[n] - b[n]).abs()
        mask = diff.new_zeros(diff.shape, dtype=bool)
        for h in rows.get(n, []):
            mask[h * D:(h + 1) * D] = True
        for h in cols.get(n, []):
            mask[:, h * D:(h + 1) * D] = True
        if (~mask).any() and bool(diff[~mask].max() > 0):
            problems.append(f"{n} changed outside the tuned slices")
        if mask.any() and not bool(diff[mask].max() > 0):
            problems.append(f"{n}: the tuned slice did not move")
    print(f"[{family}] tuned {heads} ({'ok' if not problems else 'PROBLEMS'}): {tuned}")
    return tuned, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="HF model directory (config.json, *.safetensors, tokenizer)")
    ap.add_argument("--tune-tiny", action="append", choices=["qwen2", "qwen3", "llama3"],
                    help="make a tiny model of this family, tune two heads with pinpoint, check the output")
    ap.add_argument("--pinpoint", help="the pinpoint binary")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--raw", action="store_true", help="raw text, no chat template")
    ap.add_argument("--tol", type=float, default=1e-3, help="max relative error (default 1e-3)")
    ap.add_argument("--strict-tokens", action="store_true",
                    help="also fail when HF's tokenization differs from pinpoint's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--json", help="write the report as JSON here")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    binary = find_pinpoint(a.pinpoint)
    if not os.path.exists(binary):
        print(f"pinpoint binary {binary} not found (build it, or pass --pinpoint)", file=sys.stderr)
        return 2
    if a.tune_tiny:
        status = 0
        with tempfile.TemporaryDirectory() as tmp:
            for fam in a.tune_tiny:
                tuned, problems = tune_tiny(fam, binary, tmp)
                for p in problems:
                    print(f"FAIL [{fam}] {p}")
                sub = [sys.argv[0], tuned, "--pinpoint", binary, "--strict-tokens", "--tol", str(a.tol)]
                if a.json:
                    sub += ["--json", f"{a.json}.{fam}.json"]
                r = subprocess.run([sys.executable] + sub)
                status |= int(bool(problems)) | r.returncode
        return status
    if not a.model:
        ap.error("a model directory, or --tune-tiny")
    prompts = a.prompt or DEFAULT_PROMPTS

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.json")
        cmd = [binary, "logits", "--model", a.model, "--out", out]
        if not a.raw:
            cmd.append("--chat")
        for p in prompts:
            cmd += ["--prompt", p]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{r.stderr}", file=sys.stderr)
            return 1
        with open(out) as f:
            pp = json.load(f)

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()

    rows = []
    ok = True
    for p, rec in zip(prompts, pp["prompts"]):
        ids = rec["ids"]
        if a.raw:
            hf_ids = tok(p).input_ids
        else:
            text = tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            hf_ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        ours = torch.tensor(rec["logits"], dtype=torch.float64)
        if ours.shape != logits.shape:
            print(f"vocabulary mismatch: pinpoint {ours.shape[0]}, hf {logits.shape[0]}", file=sys.stderr)
            return 1
        abs_err = (ours - logits).abs().max().item()
        rel = abs_err / logits.abs().max().item()
        top2 = torch.topk(logits, 2).values
        gap = (top2[0] - top2[1]).item()
        am_hf, am_pp = int(logits.argmax()), int(ours.argmax())
        agree = am_hf == am_pp
        near_tie = (not agree) and gap <= 2 * abs_err
        tokens_agree = list(hf_ids) == list(ids)
        good = rel <= a.tol and (agree or near_tie) and (tokens_agree or not a.strict_tokens)
        ok &= good
        rows.append({
            "prompt": p,
            "n_tokens": len(ids),
            "rel_err": rel,
            "max_abs_err": abs_err,
            "argmax_hf": am_hf,
            "argmax_pinpoint": am_pp,
            "argmax_agree": agree,
            "near_tie": near_tie,
            "top2_gap_hf": gap,
            "argmax_token": tok.decode([am_hf]),
            "hf_tokens_agree": tokens_agree,
            "ok": good,
        })
        print(
            f"{'ok  ' if good else 'FAIL'} rel_err {rel:.3e} (max abs {abs_err:.3e})  "
            f"argmax hf {am_hf} {tok.decode([am_hf])!r} / pinpoint {am_pp} "
            f"{'agree' if agree else ('near-tie' if near_tie else 'DIFFER')}  "
            f"tokens {'agree' if tokens_agree else 'DIFFER'}  [{len(ids)} tok] {p[:40]!r}"
        )
    worst = max(r["rel_err"] for r in rows)
    print(
        f"{'PASS' if ok else 'FAIL'}: max rel err {worst:.3e} (tol {a.tol:g}) over {len(rows)} prompts; "
        f"argmax agree {sum(r['argmax_agree'] for r in rows)}/{len(rows)}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, pinpoint {pp['backend']}"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({
                "model": a.model,
                "tol": a.tol,
                "max_rel_err": worst,
                "pass": ok,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "pinpoint_backend": pp["backend"],
                "prompts": rows,
            }, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
