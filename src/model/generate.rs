//! Batched KV-cache generation: greedy or seeded temperature/top-p sampling, stopping at
//! EOS or stop strings. Ablations and patches in `taps` apply at every step (knockout).

use crate::backend::Backend;
use crate::heads::{Positions, Taps};
use crate::transformer::Model;
use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax, lowest id on ties).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            eos_ids: vec![],
            stop_strings: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
}

/// New tokens of one prompt (the EOS token, if hit, is included).
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Index of the largest logit; the lowest index on ties, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Sample from `softmax(logits / temperature)` restricted to the top-p nucleus.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut impl Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= top_p as f64 {
            break;
        }
    }
    let r: f64 = rng.gen::<f64>() * mass;
    let mut acc = 0.0;
    for p in &probs[..kept] {
        acc += p.1;
        if r < acc {
            return p.0;
        }
    }
    probs[kept - 1].0
}

/// The most positions a sequence may span: `max_position_embeddings`, or none under dynamic
/// NTK RoPE, which is made to run past it.
pub fn context_limit(cfg: &crate::model::ModelConfig) -> Option<usize> {
    (!cfg.rope.length_dependent()).then_some(cfg.max_position_embeddings)
}

/// Error unless a sequence of `len` tokens fits the model's context; `what` names it.
pub fn check_fits_context(cfg: &crate::model::ModelConfig, what: &str, len: usize) -> Result<()> {
    if let Some(ctx) = context_limit(cfg) {
        if len > ctx {
            bail!(
                "{what} has {len} tokens, past the model's context of {ctx} (max_position_embeddings in config.json)"
            );
        }
    }
    Ok(())
}

/// Turns generated token ids into text (for stop strings).
pub type DecodeFn<'a> = &'a dyn Fn(&[u32]) -> Result<String>;

/// Generate continuations of `prompts` together. `decode` turns new tokens into text for
/// stop strings; `on_token(seq, token)` is called for each new token (streaming).
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    cfg: &GenConfig,
    taps: &Taps,
    decode: Option<DecodeFn<'_>>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    ensure!(!prompts.is_empty(), "no prompts to generate from");
    for (i, p) in prompts.iter().enumerate() {
        ensure!(!p.is_empty(), "prompt {i} is empty");
    }
    ensure!(
        cfg.top_p > 0.0 && cfg.top_p <= 1.0,
        "top_p must be in (0, 1], got {}",
        cfg.top_p
    );
    for (i, p) in prompts.iter().enumerate() {
        check_fits_context(&model.cfg, &format!("prompt {i}"), p.len())?;
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // Generation ends at the model's context (the longest prompt's).
    let max_new = match context_limit(&model.cfg) {
        Some(ctx) => cfg.max_new_tokens.min(ctx - longest),
        None => cfg.max_new_tokens,
    };
    let capacity = longest
        .checked_add(max_new)
        .filter(|c| c.checked_mul(prompts.len()).is_some())
        .with_context(|| {
            format!(
                "{} new tokens after a prompt of {longest} do not fit in memory",
                cfg.max_new_tokens
            )
        })?;
    let mut cache = model.new_cache(prompts.len(), capacity)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut taps = taps.clone();
    taps.capture.clear();
    taps.patterns.clear();
    taps.logits = Positions::Last;
    let mut outs: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    if max_new == 0 {
        return Ok(outs);
    }
    let mut feed: Vec<(usize, Vec<u32>)> = prompts.iter().cloned().enumerate().collect();
    while !active.is_empty() {
        let inputs: Vec<(usize, &[u32])> = feed.iter().map(|(s, t)| (*s, t.as_slice())).collect();
        let out = model.forward_cached(&inputs, &mut cache, &taps)?;
        let mut next_feed = Vec::new();
        let mut still = Vec::new();
        for (i, &(seq, _)) in out.logits.index.iter().enumerate() {
            let tok = sample(out.logits.row_at(i), cfg.temperature, cfg.top_p, &mut rng);
            let g = &mut outs[seq];
            g.tokens.push(tok);
            on_token(seq, tok);
            if cfg.eos_ids.contains(&tok) {
                g.stop = StopReason::Eos;
                continue;
            }
            if let (Some(dec), false) = (decode, cfg.stop_strings.is_empty()) {
                let text = dec(&g.tokens)?;
                if cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    g.stop = StopReason::StopString;
                    continue;
                }
            }
            if g.tokens.len() >= max_new {
                continue;
            }
            still.push(seq);
            next_feed.push((seq, vec![tok]));
        }
        active = still;
        feed = next_feed;
    }
    Ok(outs)
}
