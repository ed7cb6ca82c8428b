//! `pinpoint chat` and `pinpoint generate`.

use super::ModelArg;
use anyhow::{Context, Result};
use pinpoint::generate::{generate as run_generate, GenConfig};
use pinpoint::model::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use pinpoint::Taps;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most new tokens to produce.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the reply contains this text (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    fn config(&self, tok: &Tokenizer) -> GenConfig {
        GenConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            eos_ids: tok.end_of_turn_ids(),
            stop_strings: self.stop.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The user message.
    pub message: String,
    /// A system message (default: the template's own default, if any).
    #[arg(long)]
    pub system: Option<String>,
    /// A JSON file with earlier turns: [{"role": "...", "content": "..."}]; `message` is appended.
    #[arg(long)]
    pub history: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print the rendered prompt before the reply.
    #[arg(long)]
    pub show_prompt: bool,
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let super::Loaded { tok, model, dir } = a.model.load()?;
    let mut messages = vec![];
    if let Some(s) = &a.system {
        messages.push(ChatMessage::system(s));
    }
    if let Some(h) = &a.history {
        let text = pinpoint::util::read_text(h)?;
        let hist: Vec<ChatMessage> = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected a JSON list of messages", h.display()))?;
        messages.extend(hist);
    }
    messages.push(ChatMessage::user(&a.message));
    if a.show_prompt {
        eprintln!("{}", tok.apply_chat_template(&messages, true)?);
    }
    let ids = tok.encode_chat(&messages, true)?;
    let what = "the conversation (--history, --system and the message)";
    pinpoint::generate::check_fits_context(&model.cfg, what, ids.len())?;
    super::limits::generation(
        a.sampling.max_new_tokens,
        &model.cfg,
        &dir,
        std::slice::from_ref(&ids),
    )?;
    let cfg = a.sampling.config(&tok);
    let mut stream = StreamDecoder::new(&tok, true);
    let mut stdout = std::io::stdout();
    let decode = |ids: &[u32]| tok.decode(ids, true);
    run_generate(
        &model,
        &[ids],
        &cfg,
        &Taps::new(),
        Some(&decode),
        &mut |_, t| {
            if let Ok(piece) = stream.push(t) {
                if piece.is_empty() {
                    return;
                }
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
        },
    )?;
    crate::outln!();
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// A prompt (repeatable); all prompts run as one batch.
    #[arg(long = "prompt", required_unless_present = "file")]
    pub prompts: Vec<String>,
    /// A file with one prompt per line.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Prepend the BOS token as the tokenizer's post-processor does.
    #[arg(long)]
    pub add_special_tokens: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print JSON lines ({"prompt", "completion", "tokens", "stop"}) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let super::Loaded { tok, model, dir } = a.model.load()?;
    let mut prompts = a.prompts.clone();
    if let Some(f) = &a.file {
        let text = pinpoint::util::read_text(f)?;
        prompts.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, a.add_special_tokens))
        .collect::<Result<_>>()?;
    for (p, ids) in prompts.iter().zip(&ids) {
        let what = format!("--prompt {}", super::limits::short(p));
        pinpoint::generate::check_fits_context(&model.cfg, &what, ids.len())?;
    }
    super::limits::generation(a.sampling.max_new_tokens, &model.cfg, &dir, &ids)?;
    let cfg = a.sampling.config(&tok);
    let decode = |ids: &[u32]| tok.decode(ids, true);
    let outs = run_generate(
        &model,
        &ids,
        &cfg,
        &Taps::new(),
        Some(&decode),
        &mut |_, _| {},
    )?;
    for (p, g) in prompts.iter().zip(outs) {
        let text = tok.decode(&g.tokens, true)?;
        if a.json {
            let row = serde_json::json!({"prompt": p, "completion": text, "tokens": g.tokens, "stop": g.stop});
            crate::outln!("{row}");
        } else {
            crate::outln!("{p}{text}");
        }
    }
    Ok(())
}
