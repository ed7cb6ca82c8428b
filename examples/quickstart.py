"""pinpoint from Python in one page: load the default model, look at a cache, patch one
head, run path patching on the default pairs, print the top heads and save a heatmap
(PNG, with matplotlib where installed). Run in CI by scripts/test-python.

    pip install ./python            # or: scripts/install-python-env.sh
    python examples/quickstart.py --out quickstart
"""

import argparse
import os

import numpy as np

import pinpoint

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
ap.add_argument("--n", type=int, default=16, help="built-in MMLU pairs for path patching")
ap.add_argument("--out", default="quickstart")
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)

# 1. Load (the default model is fetched once, as `pinpoint fetch`).
model = pinpoint.Model.load(args.model)
print(model)

# 2. A cache under TransformerLens' names and shapes.
tokens = model.chat_tokens([{"role": "user", "content": "What is the capital of France?"}])
logits, cache = model.run_with_cache(tokens, names=["blocks.3.attn.hook_z",
                                                    "blocks.3.attn.hook_pattern"])
print("logits", logits.shape, "hook_z", cache["blocks.3.attn.hook_z"].shape,
      "hook_pattern", cache["blocks.3.attn.hook_pattern"].shape)

# 3. One patch: head L3H1's z at the last token, from another prompt, with no Python in
#    the loop; the same edit as a Python hook gives the same logits.
other = model.chat_tokens([{"role": "user", "content": "What is the capital of Italy?"}])
_, other_cache = model.run_with_cache(other, names=["blocks.3.attn.hook_z"])
z = other_cache["blocks.3.attn.hook_z"][0, -1, 1]
patched = model.run_with_hooks(tokens, fwd_hooks=[
    ("blocks.3.attn.hook_z", pinpoint.patch(z, head=1, pos=-1))], logits="last")


def py_patch(act, hook):
    act[0, -1, 1] = z


assert np.array_equal(patched, model.run_with_hooks(
    tokens, fwd_hooks=[("blocks.3.attn.hook_z", py_patch)], logits="last"))
print("patching L3H1 moved the last logits by", float(np.abs(patched - logits[:, -1]).max()))

# 4. Path patching of every head on the default pairs (the paper's method).
result = pinpoint.path_patching(model, n=args.n)
print("scores", result.scores.shape, "reference metric", round(result.reference_metric, 4))
print("top heads:", ", ".join(result.top(8)))

# 5. A heatmap of the scores.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no heatmap")
else:
    fig, ax = plt.subplots(figsize=(6, 6))
    lim = np.nanmax(np.abs(result.scores))
    im = ax.imshow(result.scores, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("path patching score (negative: drives sycophancy)")
    fig.colorbar(im)
    png = os.path.join(args.out, "heatmap.png")
    fig.savefig(png, dpi=100)
    print("wrote", png)
