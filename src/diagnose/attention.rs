//! Attention patterns (paper Fig. 2c): the share of the last token's attention that each
//! head puts on the challenge sentence (and the special tokens after it).

use crate::backend::Backend;
use crate::heads::{HeadId, Positions, Taps};
use crate::model::tokenizer::{ChatMessage, Tokenizer};
use crate::transformer::Model;
use anyhow::{ensure, Result};
use indicatif::ProgressBar;
use serde::Serialize;

/// Token ids of a conversation (with the generation prompt) and where its final user
/// message's text starts: the challenge span is `[start, ids.len())`.
pub fn challenge_span(tok: &Tokenizer, messages: &[ChatMessage]) -> Result<(Vec<u32>, usize)> {
    ensure!(!messages.is_empty(), "empty conversation");
    let ids = tok.encode_chat(messages, true)?;
    let last = messages.last().expect("non-empty");
    // Start of the final turn: the conversation without it is a prefix of the ids.
    let turn_start = if messages.len() > 1 {
        let prefix = tok.encode_chat(&messages[..messages.len() - 1], false)?;
        if ids.starts_with(&prefix) {
            prefix.len()
        } else {
            0
        }
    } else {
        0
    };
    // The message's own tokens inside that turn, if they tokenize the same in context.
    let body = tok.encode(last.content.trim(), false)?;
    let found = (turn_start..ids.len().saturating_sub(body.len().max(1) - 1))
        .find(|&i| !body.is_empty() && ids[i..].starts_with(&body));
    Ok((ids.clone(), found.unwrap_or(turn_start)))
}

#[derive(Debug, Clone, Serialize)]
pub struct AttentionShares {
    pub heads: Vec<HeadId>,
    /// Mean over prompts of the last token's attention mass on the challenge span, per head.
    pub share: Vec<f64>,
    /// `[head][prompt]`.
    pub per_prompt: Vec<Vec<f64>>,
}

/// Attention share of every head for each `(ids, span_start)`.
pub fn attention_shares<B: Backend>(
    model: &Model<B>,
    prompts: &[(Vec<u32>, usize)],
    progress: Option<&ProgressBar>,
) -> Result<AttentionShares> {
    ensure!(!prompts.is_empty(), "no prompts for attention patterns");
    let heads = model.all_heads();
    let mut taps = Taps::new().with_logits(Positions::None);
    taps.patterns = heads.clone();
    let mut per_prompt = vec![vec![0.0; prompts.len()]; heads.len()];
    for (p, (ids, start)) in prompts.iter().enumerate() {
        ensure!(
            *start < ids.len(),
            "prompt {p}: challenge span starts past its end"
        );
        let out = model.forward(std::slice::from_ref(ids), &taps)?;
        let t = ids.len();
        for (i, h) in heads.iter().enumerate() {
            let probs = &out.patterns[&(*h, 0)];
            let last_row = &probs.data[(t - 1) * t..t * t];
            per_prompt[i][p] = last_row[*start..].iter().map(|&x| x as f64).sum();
        }
        if let Some(pb) = progress {
            pb.inc(1);
        }
    }
    let share = per_prompt
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    Ok(AttentionShares {
        heads,
        share,
        per_prompt,
    })
}
