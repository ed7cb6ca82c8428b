//! `--heads heads.json` / `--heads-list "L3H5,L10H2"` of `attention` and `knockout`: the
//! first k heads, checked against the model (the CLI and the Python package share it).

use crate::HeadId;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The heads `attention` and `knockout` look at: the top of a heads.json, or named ones.
#[derive(clap::Args, Debug)]
pub struct HeadsArg {
    /// heads.json from `pinpoint diagnose` (heads by rank).
    #[arg(
        long,
        required_unless_present = "heads_list",
        conflicts_with = "heads_list"
    )]
    pub heads: Option<PathBuf>,
    /// Heads by name instead of --heads, in this order, comma-separated: TransformerLens'
    /// labels "L3H5,L10H2", or hook slices "blocks.3.attn.hook_z[:, :, 5]",
    /// "blocks.3.attn.hook_pattern[:, 5]".
    #[arg(long)]
    pub heads_list: Option<String>,
}

impl HeadsArg {
    /// The first `k` heads (all there are when fewer), checked against the model.
    pub fn first(&self, cfg: &crate::model::ModelConfig, k: usize) -> Result<Vec<HeadId>> {
        match (&self.heads, &self.heads_list) {
            (Some(p), _) => super::read_heads_json(p, cfg, k.min(count_heads(p)?).max(1)),
            (None, Some(l)) => {
                let mut heads = super::parse_heads_list(l, cfg)?;
                heads.truncate(k);
                Ok(heads)
            }
            (None, None) => bail!("give --heads heads.json or --heads-list"),
        }
    }
}

fn count_heads(path: &Path) -> Result<usize> {
    let text = crate::util::read_text(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(v.get("heads")
        .and_then(|h| h.as_array())
        .map_or(0, |h| h.len()))
}
