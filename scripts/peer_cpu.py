#!/usr/bin/env python3
"""Same-machine CPU peer for `pinpoint bench forward|decode|train`: HF transformers forward
(8 x 128 random tokens, full logits) and batch-1 greedy decode (16-token prompt, 32 new
tokens), f32, 2 threads, sdpa attention. With a second argument `train [LOSS_TOKENS]`:
instead, the brief's SPT-style step (q/o of every layer trainable, the rest frozen, AdamW,
8 x 128), median of 5 after 2 warm-up steps. The loss is on the last LOSS_TOKENS positions
of each sequence (default 32, as `pinpoint bench train`'s default `--loss-tokens 32`: SPT's
loss is on the final assistant turn), the rest labelled -100, as HF training code masks a
prompt; 0: every position (`labels = input_ids`, `--loss-tokens 0`). Run it beside
`pinpoint bench train` for a same-machine, same-hour ratio.

Needs torch + transformers (e.g. python3 -m venv /opt/fixvenv; /opt/fixvenv/bin/pip install torch
transformers safetensors). MODEL_DIR is a HF directory, e.g. the one `pinpoint fetch` prints:
    /opt/fixvenv/bin/python scripts/peer_cpu.py "$(pinpoint fetch)" train 32
"""
import torch, time, json, sys
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
m=AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="sdpa").eval()
ids=torch.randint(0,49152,(8,128),generator=torch.Generator().manual_seed(0))
if len(sys.argv) > 2 and sys.argv[2] == "train":
    loss_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    labels = ids.clone()
    if loss_tokens > 0:
        # HF shifts: logits at t predict labels[t + 1]; the last loss_tokens labels count.
        labels[:, : ids.shape[1] - loss_tokens] = -100
    m.train()
    for q in m.parameters(): q.requires_grad_(False)
    params = []
    for layer in m.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.o_proj):
            proj.weight.requires_grad_(True); params.append(proj.weight)
    opt = torch.optim.AdamW(params, lr=1e-5)
    def step():
        loss = m(ids, labels=labels).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(2): step()
    ts = []
    for _ in range(5):
        s = time.perf_counter(); step(); ts.append(time.perf_counter() - s)
    st = sorted(ts)[2]
    print(json.dumps({"peer": "hf-transformers", "loss_tokens": loss_tokens, "torch": torch.__version__,
                      "train_step_s": st, "train_tok_s": 1024 / st}))
    sys.exit(0)
with torch.no_grad():
    m(ids)
    ts=[]
    for _ in range(3):
        s=time.perf_counter(); m(ids); ts.append(time.perf_counter()-s)
    fw=sorted(ts)[1]
    p=ids[:1,:16]
    m.generate(p, max_new_tokens=4, do_sample=False)
    s=time.perf_counter(); out=m.generate(p, max_new_tokens=33, min_new_tokens=33, do_sample=False); e=time.perf_counter()-s
print(json.dumps({"peer":"hf-transformers","forward_s":fw,"forward_tok_s":1024/fw,"decode_tok_s":32/e}))
