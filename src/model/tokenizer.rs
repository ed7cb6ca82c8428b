//! Tokenizer (HF `tokenizer.json` via the `tokenizers` crate) and chat templates rendered with
//! minijinja the way HF transformers renders them with jinja2.

use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error as JError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

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

/// The most bytes rendering one conversation may allocate (counted cumulatively, 256 MiB):
/// real templates use kilobytes; a template that grows a string without end stops here.
pub const TEMPLATE_MEMORY: usize = 256 << 20;

/// The most template instructions one rendering may run (minijinja's fuel): a real
/// template runs some per message; nested loops over huge ranges are stopped here.
pub const TEMPLATE_FUEL: u64 = 50_000_000;

/// Render a chat template with the jinja2 settings HF uses (trim_blocks, lstrip_blocks, loop
/// controls, python string methods, `raise_exception`, `strftime_now`, HF's `tojson`).
pub fn render_chat_template(template: &str, ctx: JValue) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<JValue, JError> {
        Err(JError::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<String, JError> {
        Ok(strftime_now(&fmt))
    });
    env.add_filter("tojson", tojson);
    env.add_template("chat_template", template)
        .map_err(|e| anyhow!("parsing the chat template: {e:#}"))?;
    let t = env
        .get_template("chat_template")
        .map_err(|e| anyhow!("{e}"))?;
    t.render(ctx)
        .map_err(|e| anyhow!("rendering the chat template: {e:#}"))
}

/// `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, as HF's `tojson`.
fn tojson(v: JValue, kwargs: Kwargs) -> Result<JValue, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn py_json(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    level: usize,
    out: &mut String,
) -> Result<(), JError> {
    let newline = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f: f64 = v.clone().try_into()?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String => {
            out.push_str(
                &serde_json::to_string(v.as_str().unwrap_or("")).map_err(|e| {
                    JError::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
                })?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_json(x, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                let ks = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&serde_json::to_string(&ks).unwrap_or_default());
                out.push_str(": ");
                py_json(&v.get_item(k)?, indent, sort, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(JError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {v:?}"),
            ));
        }
    }
    Ok(())
}

/// Python's `repr(float)` for the values JSON can carry.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let s = format!("{f:?}");
    // Rust's Debug already gives the shortest round-trip digits ("1.0", "1e-7"); python writes
    // exponents as "1e-07" and uses them from 1e16 up.
    if let Some((m, e)) = s.split_once('e') {
        let exp: i32 = e.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    if f.abs() >= 1e16 {
        let s = format!("{f:e}");
        if let Some((m, e)) = s.split_once('e') {
            let exp: i32 = e.parse().unwrap_or(0);
            return format!("{m}e+{exp:02}");
        }
    }
    s
}

/// `datetime.now().strftime(fmt)` (UTC) for the common directives.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let weekday = (days + 4).rem_euclid(7) as usize; // 0 = Sunday
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let month = crate::util::MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{:03}", doy_of(y, m, d))),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

fn doy_of(y: i64, m: i64, d: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    cum[(m - 1) as usize] + d + if leap && m > 2 { 1 } else { 0 }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_floats() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e-7), "1e-07");
        assert_eq!(py_float(0.5), "0.5");
    }

    #[test]
    fn tojson_like_python() {
        let ctx = JValue::from_iter([(
            "x",
            JValue::from_iter([("b", JValue::from(1)), ("a", JValue::from("é\"\n"))]),
        )]);
        let s = render_chat_template("{{ x | tojson }}", ctx).unwrap();
        assert_eq!(s, "{\"b\": 1, \"a\": \"é\\\"\\n\"}");
    }
}
