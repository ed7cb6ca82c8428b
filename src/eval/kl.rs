//! KL(original || tuned) of next-token distributions (METHOD.md section 4): for each text
//! cut to `len` tokens, sum over positions and vocabulary of p (log p - log q), divided by
//! the number of positions; averaged over texts. Log-softmax in f64.

use crate::backend::Backend;
use crate::heads::{Positions, Taps};
use crate::model::model_header;
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelConfig;
use crate::transformer::Model;
use crate::util::progress_bar;
use anyhow::{bail, ensure, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct KlResult {
    pub mean: f64,
    /// Standard error of the mean over texts.
    pub sem: f64,
    pub per_text: Vec<f64>,
    pub n_texts: usize,
    pub max_len: usize,
}

/// Refuse to compare models of different architecture or shape.
pub fn check_same_base(base: &ModelConfig, tuned: &ModelConfig) -> Result<()> {
    let a = model_header(base, "");
    let b = model_header(tuned, "");
    if a != b {
        let mut diffs = vec![];
        for (k, v) in a.as_object().into_iter().flatten() {
            let w = &b[k];
            if v != w {
                diffs.push(format!("{k}: base {v}, tuned {w}"));
            }
        }
        bail!(
            "the tuned model is not a tuned copy of the base model ({})",
            diffs.join("; ")
        );
    }
    Ok(())
}

/// f64 log-softmax of a logits row.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p || q) of two logits rows.
pub fn kl_rows(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Token ids of `texts` (special tokens as the tokenizer adds them), cut to `len`;
/// texts with fewer than 2 tokens are dropped.
pub fn tokenize_texts(tok: &Tokenizer, texts: &[String], len: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![];
    for t in texts {
        let mut ids = tok.encode(t, true)?;
        ids.truncate(len);
        if ids.len() >= 2 {
            out.push(ids);
        }
    }
    Ok(out)
}

/// KL(base || tuned) averaged over `seqs` (each already cut to its length).
pub fn kl_divergence<B: Backend>(
    base: &Model<B>,
    tuned: &Model<B>,
    seqs: &[Vec<u32>],
    batch: usize,
    progress: bool,
) -> Result<KlResult> {
    check_same_base(&base.cfg, &tuned.cfg)?;
    ensure!(!seqs.is_empty(), "no texts to measure KL on");
    let taps = Taps::new().with_logits(Positions::All);
    let pb = progress_bar(seqs.len() as u64, "KL", progress);
    let mut per_text = vec![];
    for chunk in seqs.chunks(batch.max(1)) {
        let a = base.forward(chunk, &taps)?;
        let b = tuned.forward(chunk, &taps)?;
        ensure!(a.logits.index == b.logits.index, "logit rows differ");
        let mut sums = vec![0.0f64; chunk.len()];
        for (i, &(s, _)) in a.logits.index.iter().enumerate() {
            sums[s] += kl_rows(a.logits.row_at(i), b.logits.row_at(i));
        }
        for (s, seq) in chunk.iter().enumerate() {
            per_text.push(sums[s] / seq.len() as f64);
        }
        if let Some(pb) = &pb {
            pb.inc(chunk.len() as u64);
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let n = per_text.len() as f64;
    let mean = per_text.iter().sum::<f64>() / n;
    let var = per_text.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(KlResult {
        mean,
        sem: (var / n).sqrt(),
        n_texts: per_text.len(),
        max_len: seqs.iter().map(Vec::len).max().unwrap_or(0),
        per_text,
    })
}
