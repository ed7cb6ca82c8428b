//! The tiny HF fixture models (tests/fixtures, made by scripts/make_fixtures.py): Llama,
//! Mistral (GQA, window), the RoPE variants (llama3, linear, dynamic, yarn) and Qwen2
//! (q/k/v biases). Shared by the CPU tests (`common`) and the GPU tests (`cuda_common`).

pub const TINY_MODELS: &[&str] = &[
    "tiny-llama",
    "tiny-mistral",
    "tiny-llama3",
    "tiny-linear",
    "tiny-dynamic",
    "tiny-yarn",
    "tiny-qwen2",
];
