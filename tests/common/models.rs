//! The tiny HF fixture models (tests/fixtures, made by scripts/make_fixtures.py): Llama,
//! Mistral (GQA, window), the RoPE variants (llama3, linear, dynamic, yarn), Qwen2
//! (q/k/v biases) and Qwen3 (per-head q/k norms, head_dim != hidden / heads). Shared by the CPU tests (`common`) and the GPU tests (`cuda_common`).

pub const TINY_MODELS: &[&str] = &[
    "tiny-llama",
    "tiny-mistral",
    "tiny-llama3",
    "tiny-linear",
    "tiny-dynamic",
    "tiny-yarn",
    "tiny-qwen2",
    "tiny-qwen3",
];
