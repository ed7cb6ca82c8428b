"""The model API: the cache against HF transformers' values (the parity tests' tolerance),
against the CLI bit for bit, ragged batches, hooks (in place, returned, built-in), tokens,
generation, and the activation copy count."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pinpoint
from pinpoint import _pinpoint

from conftest import FIXTURES, TINY_MODELS, read_safetensors, run_cli

TOL = 1e-4  # tests/parity.rs


@pytest.mark.parametrize("name", TINY_MODELS)
def test_cache_matches_hf(name):
    m = pinpoint.Model.load(FIXTURES / name)
    ref = read_safetensors(FIXTURES / name / "expected.safetensors")
    ids = ref["input_ids"].astype(np.int64)
    logits, cache = m.run_with_cache(ids)
    L, H, D = m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_head
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(logits, ref["logits"], atol=TOL, rtol=0)
    for l in range(L):
        z = cache[f"blocks.{l}.attn.hook_z"]
        assert z.shape == (ids.shape[0], ids.shape[1], H, D)
        np.testing.assert_allclose(z, ref[f"z.{l}"], atol=TOL, rtol=0)
        pat = cache[f"blocks.{l}.attn.hook_pattern"]
        assert pat.shape == (ids.shape[0], H, ids.shape[1], ids.shape[1])
        np.testing.assert_allclose(pat, ref[f"attn.{l}"], atol=TOL, rtol=0)
        np.testing.assert_allclose(cache[f"blocks.{l}.hook_resid_pre"], ref[f"resid.{l}"],
                                   atol=TOL, rtol=0)
    # resid_post of layer l is resid_pre of l + 1; the last is the final residual.
    _, c = m.run_with_cache(ids, names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
    np.testing.assert_array_equal(c["blocks.0.hook_resid_post"], c["blocks.1.hook_resid_pre"])
    assert f"blocks.{L - 1}.hook_resid_post" in cache


def test_last_logits_equal_the_cli_bit_for_bit(env, tiny, tmp_path):
    prompts = ["what is the capital of france ?", "are you sure ? i think that is wrong"]
    run_cli("logits", "--model", env / "m", "--prompt", prompts[0], "--prompt", prompts[1],
            "--out", tmp_path / "l.json")
    f = json.loads((tmp_path / "l.json").read_text())
    toks = tiny.to_tokens(prompts)
    seqs = [list(t) for t in toks] if isinstance(toks, list) else [list(r) for r in toks]
    assert [p["ids"] for p in f["prompts"]] == [[int(x) for x in s] for s in seqs]
    last, _ = tiny.run_with_cache(seqs, names=[], logits="last")
    cli = np.asarray([p["logits"] for p in f["prompts"]], dtype=np.float32)
    np.testing.assert_array_equal(last, cli)
    # The full logits' last rows: the same up to the lm_head GEMM's blocking (its row count
    # differs, so its sums are ordered differently).
    full, _ = tiny.run_with_cache(seqs, names=[])
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(full[i, len(s) - 1], cli[i], atol=1e-5, rtol=0)


def test_ragged_batch_rows_equal_single_runs(tiny):
    a = [3, 13, 14, 15, 7]
    b = [24, 19, 22, 25, 26, 27, 7, 16, 17]
    names = ["blocks.1.attn.hook_z", "blocks.2.hook_mlp_out", "blocks.0.attn.hook_pattern"]
    lg, cache = tiny.run_with_cache([a, b], names=names)
    assert lg.shape == (2, len(b), tiny.cfg.d_vocab)
    for i, s in enumerate([a, b]):
        lg1, c1 = tiny.run_with_cache([s], names=names)
        n = len(s)
        np.testing.assert_allclose(lg[i, :n], lg1[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cache[names[0]][i, :n], c1[names[0]][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(cache[names[2]][i, :, :n, :n], c1[names[2]][0], atol=1e-5,
                                   rtol=0)
    # Past a sequence's end: zeros.
    assert not cache[names[1]][0, len(a):].any()
    assert not lg[0, len(a):].any()
    # The same batch as a padded array with a mask.
    padded = np.zeros((2, len(b)), dtype=np.int64)
    padded[0, : len(a)] = a
    padded[1] = b
    mask = padded != 0
    mask[0, : len(a)] = True
    lg2, cache2 = tiny.run_with_cache(padded, names=names, attention_mask=mask)
    np.testing.assert_array_equal(lg2, lg)
    np.testing.assert_array_equal(cache2[names[0]], cache[names[0]])


def test_every_hook_z_copied_once(tiny):
    names = [f"blocks.{l}.attn.hook_z" for l in range(tiny.cfg.n_layers)]
    before = _pinpoint.activation_copies()
    _, cache = tiny.run_with_cache([[3, 4, 5], [6, 7]], names=names)
    assert _pinpoint.activation_copies() - before == len(names)
    # Each array is a view of the engine's buffer, moved to numpy (not copied again): its
    # memory belongs to the Rust vector it was filled into.
    for n in names:
        assert type(cache[n].base.base).__name__ == "PySliceContainer"
        assert cache[n].flags.c_contiguous


def test_python_hook_in_place_equals_returned_and_builtin(tiny):
    toks = [[24, 19, 22, 25, 26, 27, 7], [3, 13, 14, 15, 7]]
    name = "blocks.1.attn.hook_z"
    seen = {}

    def zero_in_place(z, hook):
        seen["shape"], seen["name"] = z.shape, hook.name
        z[:, :, 2] = 0.0

    def zero_returned(z, hook):
        out = z.copy()
        out[:, :, 2] = 0.0
        return out

    a = tiny.run_with_hooks(toks, fwd_hooks=[(name, zero_in_place)])
    b = tiny.run_with_hooks(toks, fwd_hooks=[(name, zero_returned)])
    c = tiny.run_with_hooks(toks, fwd_hooks=[(name, pinpoint.mean_ablate(np.zeros(16), head=2))])
    clean = tiny.run_with_hooks(toks)
    assert seen == {"shape": (2, 7, 4, 16), "name": name}
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert np.abs(a - clean).max() > 1e-4, "zeroing a head changed nothing"


def test_patch_builtin_equals_a_python_patch_and_capture_equals_cache(tiny):
    src = [24, 19, 22, 25, 26, 27, 7]
    dst = [24, 19, 22, 25, 26, 28, 7]
    name = "blocks.2.attn.hook_z"
    _, cache = tiny.run_with_cache([src], names=[name])
    z = cache[name][0, -1, 3]

    def py_patch(act, hook):
        act[0, -1, 3] = z

    cap = pinpoint.capture()
    a = tiny.run_with_hooks([dst], fwd_hooks=[(name, pinpoint.patch(z, head=3, pos=-1)),
                                              ("blocks.2.hook_resid_pre", cap)])
    b = tiny.run_with_hooks([dst], fwd_hooks=[(name, py_patch)])
    np.testing.assert_array_equal(a, b)
    _, c2 = tiny.run_with_cache([dst], names=["blocks.2.hook_resid_pre"])
    np.testing.assert_array_equal(cap.value, c2["blocks.2.hook_resid_pre"])
    # Patching the whole residual of a run with its own values changes nothing.
    own = c2["blocks.2.hook_resid_pre"][0]
    same = tiny.run_with_hooks([dst], fwd_hooks=[
        ("blocks.2.hook_resid_pre", pinpoint.patch(own[p], pos=p)) for p in range(len(dst))])
    np.testing.assert_array_equal(same, tiny.run_with_hooks([dst]))


def test_tokens_and_chat_tokens_match_the_cli(env, tiny, tmp_path):
    msgs = [{"role": "user", "content": "are you sure ?"}]
    ids = tiny.chat_tokens(msgs)
    run_cli("logits", "--model", env / "m", "--chat", "--prompt", "are you sure ?",
            "--out", tmp_path / "c.json")
    f = json.loads((tmp_path / "c.json").read_text())
    assert ids[0].tolist() == f["prompts"][0]["ids"]
    assert tiny.to_string(tiny.to_tokens("paris is the capital")[0]) == "paris is the capital"
    assert tiny.cfg.n_layers == 3 and tiny.cfg.n_heads == 4 and tiny.cfg.d_head == 16


def test_generate_and_chat_equal_the_cli(env, tiny):
    r = run_cli("generate", "--model", env / "m", "--prompt", "what is the capital",
                "--prompt", "are you sure", "--max-new-tokens", "12", "--json")
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    got = tiny.generate(["what is the capital", "are you sure"], max_new_tokens=12,
                        return_tokens=True)
    assert [g.tolist() for g in got] == [row["tokens"] for row in rows]
    text = tiny.generate(["what is the capital", "are you sure"], max_new_tokens=12)
    assert text == [row["completion"] for row in rows]
    c = run_cli("chat", "--model", env / "m", "are you sure ?", "--max-new-tokens", "10")
    assert tiny.chat("are you sure ?", max_new_tokens=10) == c.stdout.rstrip("\n")
    sampled = tiny.generate("what is", max_new_tokens=8, temperature=0.9, seed=3,
                            return_tokens=True)
    r2 = run_cli("generate", "--model", env / "m", "--prompt", "what is", "--max-new-tokens",
                 "8", "--temperature", "0.9", "--seed", "3", "--json")
    assert sampled.tolist() == json.loads(r2.stdout.splitlines()[0])["tokens"]


def test_progress_reaches_the_callback(env, tiny, monkeypatch):
    calls = []

    class Sink:
        def __call__(self, msg, pos, length):
            calls.append((msg, pos, length))

        def close(self):
            calls.append("closed")

    import pinpoint._analyses as an

    monkeypatch.setattr(an, "progress_callback", lambda: Sink())
    pinpoint.path_patching(tiny, pairs=env / "pairs.jsonl", syc_word="apologies",
                           anti_word="yes")
    assert calls[-1] == "closed"
    done = [c for c in calls[:-1] if c[1] == c[2] and c[2] > 0]
    assert done, calls


@pytest.mark.parametrize("name", TINY_MODELS)
def test_patch_and_ablate_match_hf_hooks(name):
    """The HF fixtures' patched and mean-ablated logits (scripts/make_fixtures.py), through
    the built-ins and through Python hooks doing the same edit."""
    m = pinpoint.Model.load(FIXTURES / name)
    ref = read_safetensors(FIXTURES / name / "expected.safetensors")
    ids = ref["input_ids"].astype(np.int64)
    t = ids.shape[1]
    _, cache = m.run_with_cache(ids, names=[f"blocks.{l}.attn.hook_z" for l in range(m.cfg.n_layers)])
    z = lambda l: cache[f"blocks.{l}.attn.hook_z"]
    # patched_logits: item 0, layer 1 head 2 at the last position <- item 1.
    lg = m.run_with_hooks(ids[:1], fwd_hooks=[
        ("blocks.1.attn.hook_z", pinpoint.patch(z(1)[1, t - 1, 2], head=2, pos=t - 1))])
    np.testing.assert_allclose(lg, ref["patched_logits"].reshape(lg.shape), atol=TOL, rtol=0)

    def mid(act, hook):
        act[0, 3:7, 1] = z(0)[1, 3:7, 1]

    lg = m.run_with_hooks(ids[:1], fwd_hooks=[("blocks.0.attn.hook_z", mid)])
    np.testing.assert_allclose(lg, ref["patched_mid_logits"].reshape(lg.shape), atol=TOL,
                               rtol=0)
    # ablated_logits: (2, 0) and (0, 3) set to their mean over all positions and items.
    hooks = [(f"blocks.{l}.attn.hook_z", pinpoint.mean_ablate(z(l)[:, :, h].mean(axis=(0, 1)),
                                                              head=h)) for l, h in [(2, 0), (0, 3)]]
    lg = m.run_with_hooks(ids, fwd_hooks=hooks)
    np.testing.assert_allclose(lg, ref["ablated_logits"].reshape(lg.shape), atol=TOL, rtol=0)
