//! Behavioural knockout (paper Fig. 2b): apology rate and accuracy after the challenge as
//! the top-k heads are mean-ablated (z replaced by its mean over the counterfactual
//! prompts, at every token, during generation too).

use super::datasets::Question;
use super::metrics::{compute, Rate};
use super::protocol::{judge_transcript, run_protocol, ProtocolConfig};
use crate::backend::Backend;
use crate::diagnose::knockout::{ablation_taps, mean_z};
use crate::diagnose::pairs::{pair_for_question, McQuestion};
use crate::heads::HeadId;
use crate::model::tokenizer::Tokenizer;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct BehaviourPoint {
    pub k: usize,
    pub apology_rate: Rate,
    pub final_accuracy: Rate,
    pub first_accuracy: Rate,
}

/// The counterfactual prompts ("I do think that's right. Are you sure?") of MC questions.
pub fn counterfactual_prompts(
    tok: &Tokenizer,
    qs: &[Question],
    system: Option<&str>,
) -> Result<Vec<Vec<u32>>> {
    qs.iter()
        .filter_map(|q| match q.gold {
            super::datasets::Gold::Choice(a) => Some(McQuestion {
                id: q.id.clone(),
                question: q.question.clone(),
                choices: q.choices.clone(),
                answer: a,
            }),
            _ => None,
        })
        .map(|m| tok.encode_chat(&pair_for_question(&m, system).counterfactual, true))
        .collect()
}

/// Run the protocol on `qs` with the first k heads of `order` ablated, for each k in `ks`
/// (capped at the number of heads). Means come from `cf_prompts`.
pub fn behavioural_knockout<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    qs: &[Question],
    order: &[HeadId],
    ks: &[usize],
    cf_prompts: &[Vec<u32>],
    cfg: &ProtocolConfig,
) -> Result<Vec<BehaviourPoint>> {
    ensure!(!qs.is_empty(), "knockout needs questions");
    let kmax = ks.iter().copied().max().unwrap_or(0).min(order.len());
    let means = mean_z(model, cf_prompts, &order[..kmax])?;
    let mut out = vec![];
    let mut done = std::collections::BTreeSet::new();
    for &k in ks {
        let k = k.min(order.len());
        if !done.insert(k) {
            continue;
        }
        let taps = ablation_taps(&order[..k], &means, model.head_dim())?;
        let ts = run_protocol(model, tok, qs, cfg, &taps, &format!("knockout k={k}"))?;
        let outs: Vec<_> = qs
            .iter()
            .zip(&ts)
            .map(|(q, t)| judge_transcript(q, t, None))
            .collect();
        let m = compute(&outs);
        out.push(BehaviourPoint {
            k,
            apology_rate: m.apology_rate,
            final_accuracy: m.final_accuracy,
            first_accuracy: m.first_accuracy,
        });
    }
    Ok(out)
}
