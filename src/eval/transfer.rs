//! Does the cure carry over? Beside the paper's challenge: the same first answers
//! challenged with held-out phrasings no training dialogue contains
//! ([`super::challenges::HELD_OUT`]), and the suggestion probe ([`super::probe`]) on the
//! questions the model answers right when asked plainly.

use super::judge;
use super::metrics::{compute, Metrics};
use super::probe::{probe_metrics, run_probe, ProbeMetrics, ProbeTranscript};
use super::protocol::{judge_transcript, run_held_out, Outcome, ProtocolConfig, Transcript};
use super::question::Question;
use crate::backend::Backend;
use crate::model::tokenizer::Tokenizer;
use crate::transformer::Model;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The transfer measurements of one model on one question list.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The protocol with held-out challenges, one per question, in question order.
    pub held_out: Vec<Transcript>,
    /// Wrong- and right-suggestion probes of the questions answered right at first.
    pub probes: Vec<ProbeTranscript>,
}

/// Run both measurements after `paper`, the model's paper-challenge transcripts of `qs`
/// (their first answers are reused: the same greedy answers).
pub fn run_transfer<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    qs: &[Question],
    paper: &[Transcript],
    cfg: &ProtocolConfig,
    seed: u64,
    label: &str,
) -> Result<Transfer> {
    let held_out = run_held_out(model, tok, qs, paper, cfg, &format!("{label} held-out"))?;
    let known: Vec<bool> = qs
        .iter()
        .zip(paper)
        .map(|(q, t)| judge::is_correct(q, &t.first))
        .collect();
    let probes = run_probe(
        model,
        tok,
        qs,
        &known,
        cfg,
        seed,
        &format!("{label} suggestion"),
    )?;
    Ok(Transfer { held_out, probes })
}

/// The held-out outcomes, judged as the paper challenge's are.
pub fn held_out_outcomes(qs: &[Question], t: &Transfer) -> Vec<Outcome> {
    qs.iter()
        .zip(&t.held_out)
        .map(|(q, tr)| judge_transcript(q, tr, None))
        .collect()
}

/// The sets every metrics file has: all, mc (multiple choice), short (short answer).
fn in_set(set: &str, q: &Question) -> bool {
    match set {
        "mc" => q.is_mc(),
        "short" => !q.is_mc(),
        _ => true,
    }
}

/// The transfer rates per set (all, mc, short): metrics.json's "held_out" and
/// "suggestion" keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferMetrics {
    /// The protocol's rates under the held-out challenges.
    pub held_out: BTreeMap<String, Metrics>,
    /// The suggestion probe's follow and agreement rates.
    pub suggestion: BTreeMap<String, ProbeMetrics>,
}

/// metrics.json of one evaluation: the paper challenge's rates per set, then (when
/// measured) the transfer rates.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsFile {
    pub all: Metrics,
    pub mc: Metrics,
    pub short: Metrics,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferMetrics>,
}

impl MetricsFile {
    pub fn new(outs: &[Outcome], transfer: Option<TransferMetrics>) -> Self {
        let of = |mc: Option<bool>| {
            let o: Vec<Outcome> = outs
                .iter()
                .filter(|o| mc.is_none_or(|m| o.mc == m))
                .cloned()
                .collect();
            compute(&o)
        };
        Self {
            all: of(None),
            mc: of(Some(true)),
            short: of(Some(false)),
            transfer,
        }
    }

    /// (set name, rates) of the paper challenge.
    pub fn sets(&self) -> [(&'static str, &Metrics); 3] {
        [("all", &self.all), ("mc", &self.mc), ("short", &self.short)]
    }
}

/// The transfer rates of `t` per set.
pub fn transfer_metrics(qs: &[Question], t: &Transfer) -> Result<TransferMetrics> {
    let outs = held_out_outcomes(qs, t);
    let by_id: BTreeMap<&str, &Question> = qs.iter().map(|q| (q.id.as_str(), q)).collect();
    let mut held = BTreeMap::new();
    let mut sugg = BTreeMap::new();
    for set in ["all", "mc", "short"] {
        let o: Vec<Outcome> = qs
            .iter()
            .zip(&outs)
            .filter(|(q, _)| in_set(set, q))
            .map(|(_, o)| o.clone())
            .collect();
        held.insert(set.to_string(), compute(&o));
        let mut pq: Vec<&Question> = vec![];
        let mut pt: Vec<&ProbeTranscript> = vec![];
        for p in &t.probes {
            let Some(&q) = by_id.get(p.id.as_str()) else {
                bail!(
                    "a probe of question {} that is not in the question list",
                    p.id
                );
            };
            if in_set(set, q) {
                pq.push(q);
                pt.push(p);
            }
        }
        sugg.insert(set.to_string(), probe_metrics(&pq, &pt));
    }
    Ok(TransferMetrics {
        held_out: held,
        suggestion: sugg,
    })
}
