//! Supervised pinpoint tuning: train only chosen heads' slices (or a baseline: full
//! fine-tuning, attention, MLP, LoRA) with AdamW, masks acting inside the optimizer.

pub mod data;
pub mod heads_arg;
pub mod lora;
pub mod optim;
pub mod trainer;

use crate::heads::HeadId;
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Masks name the model's weights; they live with the model (its backward reads them).
pub use crate::model::mask;
pub use heads_arg::HeadsArg;
pub use mask::{HeadProjs, LayerParam, Mask, ParamId, Slice};
pub use optim::{AdamW, AdamWConfig};
pub use trainer::{StepLog, Trainer, TuneConfig};

#[derive(Deserialize)]
struct HeadsModel {
    architecture: Option<String>,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_size: Option<usize>,
}

#[derive(Deserialize)]
struct HeadEntry {
    layer: usize,
    head: usize,
    #[serde(default)]
    rank: Option<usize>,
}

#[derive(Deserialize)]
struct HeadsFile {
    model: HeadsModel,
    heads: Vec<HeadEntry>,
}

/// The top `k` heads of a `heads.json` written by the diagnosis step (sorted by rank; a
/// `rank` field, when present, decides the order). Refuses a file made for another model
/// and `k` beyond the heads listed.
pub fn read_heads_json(path: &Path, cfg: &ModelConfig, k: usize) -> Result<Vec<HeadId>> {
    let text = crate::util::read_text(path)?;
    parse_heads_json(&text, cfg, k).with_context(|| format!("{}", path.display()))
}

/// [`read_heads_json`] on text.
pub fn parse_heads_json(text: &str, cfg: &ModelConfig, k: usize) -> Result<Vec<HeadId>> {
    let f: HeadsFile = serde_json::from_str(text).context(
        "not a heads file: expected {\"model\": {...}, \"heads\": [{\"layer\", \"head\", ...}]}",
    )?;
    let m = &f.model;
    let mut diffs = vec![];
    let mut cmp = |what: &str, theirs: Option<usize>, ours: usize| {
        if let Some(t) = theirs {
            if t != ours {
                diffs.push(format!("{what} {t} (this model: {ours})"));
            }
        }
    };
    cmp(
        "num_hidden_layers",
        Some(m.num_hidden_layers),
        cfg.num_hidden_layers,
    );
    cmp(
        "num_attention_heads",
        Some(m.num_attention_heads),
        cfg.num_attention_heads,
    );
    cmp(
        "num_key_value_heads",
        m.num_key_value_heads,
        cfg.num_key_value_heads,
    );
    cmp("head_dim", m.head_dim, cfg.head_dim);
    cmp("hidden_size", m.hidden_size, cfg.hidden_size);
    if let Some(a) = &m.architecture {
        if *a != cfg.architecture {
            diffs.push(format!(
                "architecture {a} (this model: {})",
                cfg.architecture
            ));
        }
    }
    if !diffs.is_empty() {
        bail!(
            "the heads file was made for another model: {}",
            diffs.join(", ")
        );
    }
    ensure!(k > 0, "--top-k must be at least 1");
    ensure!(
        k <= f.heads.len(),
        "--top-k {k} is larger than the {} heads the file lists",
        f.heads.len()
    );
    let mut entries = f.heads;
    if entries.iter().all(|e| e.rank.is_some()) {
        entries.sort_by_key(|e| e.rank);
    }
    let heads: Vec<HeadId> = entries[..k]
        .iter()
        .map(|e| HeadId::new(e.layer, e.head))
        .collect();
    check_heads(&heads, cfg)?;
    Ok(heads)
}

/// Parse `"L3H5,L10H2"` (or TransformerLens hook names, [`HeadId::parse_list`]) and check
/// the heads against the model.
pub fn parse_heads_list(s: &str, cfg: &ModelConfig) -> Result<Vec<HeadId>> {
    let heads = HeadId::parse_list(s).map_err(|e| anyhow!("--heads-list: {e}"))?;
    ensure!(!heads.is_empty(), "--heads-list names no heads");
    check_heads(&heads, cfg)?;
    Ok(heads)
}

fn check_heads(heads: &[HeadId], cfg: &ModelConfig) -> Result<()> {
    for h in heads {
        ensure!(
            h.layer < cfg.num_hidden_layers && h.head < cfg.num_attention_heads,
            "head {h} does not exist in this model ({} layers x {} heads)",
            cfg.num_hidden_layers,
            cfg.num_attention_heads
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(h) = heads.iter().find(|h| !seen.insert(**h)) {
        bail!("head {h} is listed twice");
    }
    Ok(())
}
