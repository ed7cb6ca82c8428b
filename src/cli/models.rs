//! `pinpoint inspect`.

use super::ModelArg;
use anyhow::{Context, Result};
use pinpoint::model::checkpoint::{load_tensors, safetensors_files};
use pinpoint::model::ModelConfig;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let dir = a.model.resolve()?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = safetensors_files(&dir)?;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut params = 0usize;
    for f in &files {
        let file = std::fs::File::open(f)?;
        // SAFETY: read-only map of a file we do not modify.
        let mmap = unsafe { memmap2::Mmap::map(&file)? };
        let st = safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", f.display()))?;
        for (_, v) in st.tensors() {
            let n: usize = v.shape().iter().product();
            params += n;
            *dtypes.entry(format!("{:?}", v.dtype())).or_default() += n;
        }
    }
    // Full validation of names and shapes.
    let loaded = load_tensors(&files)?;
    pinpoint::model::checkpoint::weights_from_tensors(&cfg, loaded)
        .with_context(|| format!("checking the weights of {}", dir.display()))?;
    // The chat format the tokenizer's template writes and the tokens that end a turn.
    let (template, end_of_turn) = if dir.join("tokenizer.json").exists() {
        let tok = pinpoint::model::tokenizer::Tokenizer::from_dir(&dir)?;
        let eot: Vec<String> = tok
            .end_of_turn_ids()
            .iter()
            .map(|&i| tok.inner().id_to_token(i).unwrap_or_else(|| i.to_string()))
            .collect();
        (tok.chat_format().to_string(), eot)
    } else {
        ("none (no tokenizer.json)".to_string(), vec![])
    };
    let info = serde_json::json!({
        "dir": dir.display().to_string(),
        "family": cfg.family(),
        "architecture": cfg.architecture,
        "rope": cfg.rope.scaling.name(),
        "rope_detail": cfg.rope.describe(),
        "qkv_bias": cfg.qkv_bias,
        "chat_template": template,
        "end_of_turn": end_of_turn,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "sliding_window": cfg.sliding_window,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "parameters": params,
        "dtypes": dtypes,
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
    });
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        crate::outln!("{}", dir.display());
        crate::outln!(
            "  family {} ({}), RoPE {}{}, chat template {} (end of turn: {})",
            cfg.family(),
            cfg.architecture,
            cfg.rope.describe(),
            if cfg.qkv_bias { ", q/k/v biases" } else { "" },
            template,
            if end_of_turn.is_empty() {
                "none".to_string()
            } else {
                end_of_turn.join(" ")
            }
        );
        crate::outln!(
            "  {}: {} layers, {} query heads, {} key/value heads{}, head dim {}, hidden {}, MLP {}, vocab {}",
            cfg.architecture,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            if cfg.is_gqa() { " (GQA)" } else { "" },
            cfg.head_dim,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size
        );
        crate::outln!(
            "  rope theta {}, sliding window {:?}, tied embeddings {}",
            cfg.rope_theta,
            cfg.sliding_window,
            cfg.tie_word_embeddings
        );
        crate::outln!(
            "  {:.1}M parameters stored as {:?}",
            params as f64 / 1e6,
            dtypes
        );
    }
    Ok(())
}
