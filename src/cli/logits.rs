//! `pinpoint logits`: token ids and last-position logits of prompts, as JSON, for
//! cross-checks against another implementation (`scripts/check_tuned_hf.py`).

use super::ModelArg;
use anyhow::{ensure, Context, Result};
use pinpoint::model::tokenizer::ChatMessage;
use pinpoint::Taps;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A prompt (repeatable); all prompts run as one batch.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Treat each prompt as a user message: apply the chat template with the generation
    /// prompt (as HF `apply_chat_template(..., add_generation_prompt=True)`).
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat (default: the template's own default, if any).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Without --chat: add the tokenizer's special tokens (BOS) as its post-processor does.
    #[arg(long, conflicts_with = "chat")]
    pub add_special_tokens: bool,
    /// How many of the largest logits to list per prompt.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only the top logits, not the full vector.
    #[arg(long)]
    pub top_only: bool,
    /// Output JSON file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct TopLogit {
    id: u32,
    logit: f32,
    token: String,
}

#[derive(Serialize)]
struct PromptLogits {
    prompt: String,
    /// The text fed to the tokenizer (the rendered chat template with --chat).
    text: String,
    ids: Vec<u32>,
    argmax: u32,
    top: Vec<TopLogit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

#[derive(Serialize)]
struct LogitsFile {
    model: String,
    backend: String,
    chat: bool,
    vocab_size: usize,
    prompts: Vec<PromptLogits>,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let super::Loaded { dir, tok, model } = a.model.load()?;
    let mut texts = vec![];
    let mut seqs = vec![];
    for p in &a.prompts {
        let (text, ids) = if a.chat {
            let mut msgs = vec![];
            if let Some(s) = &a.system {
                msgs.push(ChatMessage::system(s));
            }
            msgs.push(ChatMessage::user(p));
            let text = tok.apply_chat_template(&msgs, true)?;
            let ids = tok.encode(&text, false)?;
            (text, ids)
        } else {
            (p.clone(), tok.encode(p, a.add_special_tokens)?)
        };
        ensure!(!ids.is_empty(), "prompt {p:?} tokenizes to no tokens");
        let what = format!("--prompt {}", super::limits::short(p));
        pinpoint::generate::check_fits_context(&model.cfg, &what, ids.len())?;
        texts.push(text);
        seqs.push(ids);
    }
    let out = model.forward(&seqs, &Taps::new())?;
    let mut rows = vec![];
    for (i, (p, (text, ids))) in a
        .prompts
        .iter()
        .zip(texts.into_iter().zip(seqs))
        .enumerate()
    {
        let row = out
            .logits
            .last_of(i)
            .ok_or_else(|| anyhow::anyhow!("no logits for prompt {i}"))?;
        pinpoint::guard::finite(&format!("logits of prompt {i} ({p:?})"), row).with_context(
            || {
                format!(
                    "the model in {} computes non-finite logits (broken weights or config.json); nothing was written to {}",
                    dir.display(),
                    a.out.display()
                )
            },
        )?;
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
        let top = order
            .iter()
            .take(a.top)
            .map(|&t| {
                Ok(TopLogit {
                    id: t as u32,
                    logit: row[t],
                    token: tok.decode(&[t as u32], false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push(PromptLogits {
            prompt: p.clone(),
            text,
            ids,
            argmax: pinpoint::generate::argmax(row),
            top,
            logits: (!a.top_only).then(|| row.to_vec()),
        });
    }
    let file = LogitsFile {
        model: dir.display().to_string(),
        backend: model.backend_name(),
        chat: a.chat,
        vocab_size: model.cfg.vocab_size,
        prompts: rows,
    };
    pinpoint::util::atomic_write(&a.out, &serde_json::to_vec(&file)?)?;
    eprintln!(
        "wrote last-position logits of {} prompt(s) to {}",
        file.prompts.len(),
        a.out.display()
    );
    Ok(())
}
