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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="HF model directory (config.json, *.safetensors, tokenizer)")
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
    prompts = a.prompt or DEFAULT_PROMPTS
    binary = find_pinpoint(a.pinpoint)
    if not os.path.exists(binary):
        print(f"pinpoint binary {binary} not found (build it, or pass --pinpoint)", file=sys.stderr)
        return 2

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
