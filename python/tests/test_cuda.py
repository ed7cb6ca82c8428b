"""The same calls on the CUDA device (bf16), where one is lent: skipped with the reason
when CUDA cannot be used here."""

from __future__ import annotations

import numpy as np
import pytest

import pinpoint

from conftest import FIXTURES, read_safetensors

BF16_TOL = 5e-2  # bf16 activations and weights against HF's f32


@pytest.fixture(scope="module")
def cuda_model():
    try:
        return pinpoint.Model.load(FIXTURES / "tiny-llama", device="cuda")
    except ValueError as e:
        if "CUDA is not usable" in str(e):
            pytest.skip(f"no CUDA device: {e}")
        raise


def test_cuda_cache_matches_hf(cuda_model):
    ref = read_safetensors(FIXTURES / "tiny-llama" / "expected.safetensors")
    ids = ref["input_ids"].astype(np.int64)
    logits, cache = cuda_model.run_with_cache(ids)
    np.testing.assert_allclose(logits, ref["logits"], atol=BF16_TOL * 4, rtol=0)
    for l in range(cuda_model.cfg.n_layers):
        np.testing.assert_allclose(cache[f"blocks.{l}.attn.hook_z"], ref[f"z.{l}"],
                                   atol=BF16_TOL, rtol=0)
        np.testing.assert_allclose(cache[f"blocks.{l}.attn.hook_pattern"], ref[f"attn.{l}"],
                                   atol=BF16_TOL, rtol=0)


def test_cuda_hooks_equal_builtins(cuda_model):
    toks = [[24, 19, 22, 25, 26, 27, 7], [3, 13, 14, 15, 7]]

    def zero(z, hook):
        z[:, :, 2] = 0.0

    a = cuda_model.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_z", zero)])
    b = cuda_model.run_with_hooks(toks, fwd_hooks=[
        ("blocks.1.attn.hook_z", pinpoint.mean_ablate(np.zeros(16), head=2))])
    np.testing.assert_array_equal(a, b)
    cpu = pinpoint.Model.load(FIXTURES / "tiny-llama")
    c = cpu.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_z", zero)])
    np.testing.assert_allclose(a, c, atol=BF16_TOL * 4, rtol=0)
