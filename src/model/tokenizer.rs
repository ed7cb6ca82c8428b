//! Tokenizer (HF `tokenizer.json` via the `tokenizers` crate): loading a model directory's
//! tokenizer files, encoding and decoding (also streamed), its special and end-of-turn
//! tokens, and chat templates (rendered by `template.rs` the way HF transformers renders
//! them with jinja2).

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::Value as JValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

mod template;
pub use template::{render_chat_template, TEMPLATE_FUEL, TEMPLATE_MEMORY};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
}

/// The special tokens HF passes to a chat template (its `special_tokens_map`).
const SPECIAL_NAMES: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Tokens that end an assistant turn in the chat formats pinpoint knows (Llama 3, ChatML /
/// Qwen); used besides the eos token where the vocabulary has them.
pub const END_OF_TURN_TOKENS: &[&str] = &["<|eot_id|>", "<|im_end|>"];

/// A loaded tokenizer with its chat template and special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    /// The file the chat template came from (for errors).
    template_file: String,
    /// (name, token string) for each special token set in the config.
    special: Vec<(String, String)>,
    generation_eos: Vec<u32>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::util::read_text(path)?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(v))
}

/// A special token written as a string or as an `{"content": ...}` object.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Load `tokenizer.json`, and if present `tokenizer_config.json`, `special_tokens_map.json`,
    /// `chat_template.jinja` and `generation_config.json`, from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            bail!(
                "no tokenizer.json at {} (pinpoint needs a fast-tokenizer file)",
                tj.display()
            );
        }
        let inner = crate::model::tokenizer_file::load_tokenizer_json(&tj)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        let map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or(Value::Null);
        let mut special = vec![];
        for name in SPECIAL_NAMES {
            if let Some(t) = cfg
                .get(*name)
                .and_then(token_string)
                .or_else(|| map.get(*name).and_then(token_string))
            {
                special.push((name.to_string(), t));
            }
        }
        let jinja = dir.join("chat_template.jinja");
        let template_file = if jinja.exists() { &jinja } else { &cfg_path };
        let template_file = template_file.display().to_string();
        let chat_template = if jinja.exists() {
            Some(crate::util::read_text(&jinja)?)
        } else {
            match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => {
                    let found = list
                        .iter()
                        .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"));
                    let t = found
                        .and_then(|e| e.get("template"))
                        .and_then(|t| t.as_str());
                    match t {
                        Some(t) => Some(t.to_string()),
                        None => bail!(
                            "{}: chat_template is a list with no \"default\" entry",
                            cfg_path.display()
                        ),
                    }
                }
                Some(_) => bail!(
                    "{}: chat_template is neither a string nor a list",
                    cfg_path.display()
                ),
            }
        };
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let generation_eos = crate::model::config::token_ids(
            gen.get("eos_token_id"),
            Some(inner.get_vocab_size(true)),
            &format!(
                "{}: eos_token_id",
                dir.join("generation_config.json").display()
            ),
        )?;
        Ok(Self {
            inner,
            chat_template,
            template_file,
            special,
            generation_eos,
        })
    }

    /// Error unless every id of this tokenizer (loaded from `dir`) is below `vocab_size`.
    pub fn check_vocab(&self, vocab_size: usize, dir: &Path) -> Result<()> {
        crate::model::tokenizer_file::check_vocab(&self.inner, vocab_size, dir)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding {} ids: {e}", ids.len()))
    }

    /// A special token's string by HF attribute name (`"bos_token"`, `"eos_token"`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.special_token("bos_token")
            .and_then(|t| self.token_id(t))
    }

    /// The eos token's id, then generation_config's eos ids, without repeats.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .special_token("eos_token")
            .and_then(|t| self.token_id(t))
            .into_iter()
            .collect();
        for &i in &self.generation_eos {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The tokens that end a turn: [`Tokenizer::eos_token_ids`], then those of
    /// [`END_OF_TURN_TOKENS`] this vocabulary has (Llama-3's `<|eot_id|>` and ChatML's
    /// `<|im_end|>` end a turn even where `eos_token` is `<|end_of_text|>` / `<|endoftext|>`).
    /// Generation stops at them and the loss mask ends the reply at the last one.
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let mut out = self.eos_token_ids();
        for t in END_OF_TURN_TOKENS {
            if let Some(i) = self.token_id(t) {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// The chat format the template writes, for `inspect`: `llama3`, `chatml` (`qwen` when it
    /// has Qwen's default system prompt), `mistral-control` (`[INST]` as a control token, as
    /// Mistral v0.3), `mistral`, `llama2`, `other`, or `none`.
    pub fn chat_format(&self) -> &'static str {
        let Some(t) = self.chat_template.as_deref() else {
            return "none";
        };
        if t.contains("<|start_header_id|>") {
            "llama3"
        } else if t.contains("<|im_start|>") {
            if t.contains("You are Qwen") {
                "qwen"
            } else {
                "chatml"
            }
        } else if t.contains("<<SYS>>") {
            "llama2"
        } else if t.contains("[INST]") {
            if self.token_id("[INST]").is_some() {
                "mistral-control"
            } else {
                "mistral"
            }
        } else {
            "other"
        }
    }

    /// Vocabulary size including added tokens (HF's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The first sub-token of `word` encoded without special tokens.
    pub fn first_token_of_word(&self, word: &str) -> Result<u32> {
        let ids = self.encode(word, false)?;
        ids.first()
            .copied()
            .with_context(|| format!("{word:?} tokenizes to no tokens"))
    }

    /// Render a conversation with the chat template, as HF `apply_chat_template(tokenize=False)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .context("this tokenizer has no chat template (no chat_template in tokenizer_config.json and no chat_template.jinja)")?;
        let mut ctx = std::collections::BTreeMap::new();
        for (n, t) in &self.special {
            ctx.insert(n.clone(), JValue::from(t.clone()));
        }
        let msgs: Vec<JValue> = messages
            .iter()
            .map(|m| {
                JValue::from_iter([
                    ("role", JValue::from(m.role.clone())),
                    ("content", JValue::from(m.content.clone())),
                ])
            })
            .collect();
        ctx.insert("messages".into(), JValue::from(msgs));
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        let what = format!("rendering the chat template of {}", self.template_file);
        crate::util::alloc_cap::capped(TEMPLATE_MEMORY, &what, || {
            render_chat_template(template, JValue::from_iter(ctx))
        })
        .with_context(|| format!("the chat template of {}", self.template_file))
    }

    /// Render and encode without special tokens, as HF `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special_tokens)
    }
}

/// Decodes a growing list of token ids into text, returning each piece once complete: a piece
/// that ends inside a multi-byte UTF-8 character is held back until the next token finishes it.
/// Concatenating every `push` result and `finish()` gives `decode(all ids)`.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tok,
            skip_special: skip_special_tokens,
            ids: vec![],
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Add one token; return the text it completes (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tok
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full
                .get(prefix.len()..)
                .filter(|_| full.starts_with(&prefix))
            {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(new);
            }
        }
        Ok(String::new())
    }

    /// The text still held back (e.g. an incomplete character at the end of generation).
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tok
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full
            .get(prefix.len()..)
            .filter(|_| full.starts_with(&prefix))
            .unwrap_or("")
            .to_string())
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
