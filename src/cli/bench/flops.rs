//! The FLOP and parameter counts of `pinpoint bench`'s rows: the matmul and attention work
//! the method must do, for the floor each measurement is compared with.

use pinpoint::model::ModelConfig;

/// Matmul FLOPs of one token through one layer (q, k, v, o, gate, up, down).
pub(super) fn layer_flops(c: &ModelConfig) -> f64 {
    let (d, q, kv, f) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
    );
    2.0 * (d * (q + 2.0 * kv) + q * d + 3.0 * d * f)
}

/// FLOPs of a forward of `batch` sequences of `seq` tokens (causal attention: QK^T and PV
/// over the visible keys) with `logit_rows` rows of lm_head.
pub(super) fn forward_flops(c: &ModelConfig, batch: usize, seq: usize, logit_rows: usize) -> f64 {
    let (b, t) = (batch as f64, seq as f64);
    let attn = 4.0 * c.q_dim() as f64 * b * t * (t + 1.0) / 2.0;
    c.num_hidden_layers as f64 * (b * t * layer_flops(c) + attn)
        + 2.0 * logit_rows as f64 * (c.hidden_size * c.vocab_size) as f64
}

/// Parameters of a model of `c` (a tied embedding counted once).
pub(super) fn n_params(c: &ModelConfig) -> f64 {
    let (d, q, kv, f, v) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
        c.vocab_size as f64,
    );
    let layer = d * (q + 2.0 * kv) + q * d + 3.0 * d * f + 2.0 * d;
    v * d * if c.tie_word_embeddings { 1.0 } else { 2.0 } + c.num_hidden_layers as f64 * layer + d
}

/// FLOPs of the fast exact sweep: per source layer l, H*P new rows through W_o, and every
/// row of layers <= l through layer l's MLP; two label logits per row.
pub(super) fn sweep_flops(c: &ModelConfig, pairs: usize) -> f64 {
    let (d, q, f) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.intermediate_size as f64,
    );
    let hp = (c.num_attention_heads * pairs) as f64;
    let l_n = c.num_hidden_layers;
    (0..l_n)
        .map(|l| (l + 1) as f64 * hp * 6.0 * d * f + 2.0 * hp * q * d)
        .sum::<f64>()
        + l_n as f64 * hp * 4.0 * d
}

/// FLOPs of the activation sweep: per layer l, H*P one-token rows through layers l.. with
/// attention over the prompt, two label logits each.
pub(super) fn activation_flops(c: &ModelConfig, pairs: usize, seq: usize) -> f64 {
    let hp = (c.num_attention_heads * pairs) as f64;
    let per_layer = layer_flops(c) + 4.0 * c.q_dim() as f64 * seq as f64;
    let l_n = c.num_hidden_layers;
    (0..l_n)
        .map(|l| (l_n - l) as f64 * hp * per_layer + hp * 4.0 * c.hidden_size as f64)
        .sum()
}
