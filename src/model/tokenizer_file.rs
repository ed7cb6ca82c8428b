//! Reading `tokenizer.json` with errors that name the file and the field: the `tokenizers`
//! crate reports an unknown component type as "data did not match any variant of untagged
//! enum", so the component types are checked here first against the ones it supports.
//! Also the check that the tokenizer's ids fit the model's vocabulary.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::str::FromStr;

/// (field, the key of its list in a `Sequence`, the `type` values the tokenizers crate reads).
const COMPONENTS: &[(&str, &str, &[&str])] = &[
    ("model", "", &["BPE", "WordPiece", "WordLevel", "Unigram"]),
    (
        "normalizer",
        "normalizers",
        &[
            "BertNormalizer",
            "Strip",
            "StripAccents",
            "NFC",
            "NFD",
            "NFKC",
            "NFKD",
            "Sequence",
            "Lowercase",
            "Nmt",
            "Precompiled",
            "Replace",
            "Prepend",
            "ByteLevel",
        ],
    ),
    (
        "pre_tokenizer",
        "pretokenizers",
        &[
            "BertPreTokenizer",
            "ByteLevel",
            "CharDelimiterSplit",
            "Metaspace",
            "Whitespace",
            "Sequence",
            "Split",
            "Punctuation",
            "WhitespaceSplit",
            "Digits",
            "UnicodeScripts",
            "FixedLength",
        ],
    ),
    (
        "decoder",
        "decoders",
        &[
            "BPEDecoder",
            "ByteLevel",
            "WordPiece",
            "Metaspace",
            "CTC",
            "Sequence",
            "Replace",
            "Fuse",
            "Strip",
            "ByteFallback",
        ],
    ),
    (
        "post_processor",
        "processors",
        &[
            "RobertaProcessing",
            "BertProcessing",
            "ByteLevel",
            "TemplateProcessing",
            "Sequence",
        ],
    ),
];

/// Load `tokenizer.json` (a leading byte-order mark is skipped); a component of a type the
/// tokenizers crate does not know is an error naming the file, the field and the types
/// supported.
pub fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = crate::util::read_text(path)?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if !v.is_object() {
        bail!("{}: expected a JSON object", path.display());
    }
    for (field, list, types) in COMPONENTS {
        check_component(&v, field, list, types).with_context(|| path.display().to_string())?;
    }
    tokenizers::Tokenizer::from_str(&text).map_err(|e| anyhow!("loading {}: {e}", path.display()))
}

/// `v[field]` (absent or null is fine, except for `model`) has a known `type`; a `Sequence`
/// is checked member by member.
fn check_component(v: &Value, field: &str, list: &str, types: &[&str]) -> Result<()> {
    let c = match v.get(field) {
        None | Some(Value::Null) if field == "model" => bail!("no `model` field"),
        None | Some(Value::Null) => return Ok(()),
        Some(c) => c,
    };
    check_type(c, field, types)?;
    if let Some(members) = c.get(list).and_then(|m| m.as_array()) {
        for (i, m) in members.iter().enumerate() {
            check_type(m, &format!("{field}.{list}[{i}]"), types)?;
        }
    }
    Ok(())
}

fn check_type(c: &Value, field: &str, types: &[&str]) -> Result<()> {
    if !c.is_object() {
        bail!("`{field}` is {c}, not an object");
    }
    match c.get("type") {
        // A `model` without `type` is read by its fields (old BPE files).
        None if field == "model" => Ok(()),
        Some(Value::String(t)) if types.contains(&t.as_str()) => Ok(()),
        Some(Value::String(t)) => bail!(
            "`{field}.type` is {t:?}, which pinpoint's tokenizer library does not support (supported: {})",
            types.join(", ")
        ),
        Some(t) => bail!(
            "`{field}.type` is {t}, not a string (supported: {})",
            types.join(", ")
        ),
        None => bail!(
            "`{field}` has no `type` (supported: {})",
            types.join(", ")
        ),
    }
}

/// Every id the tokenizer can produce must have a row in the model's embedding: an id at or
/// past `vocab_size` is an error naming tokenizer.json, config.json and the first such tokens.
pub fn check_vocab(tok: &tokenizers::Tokenizer, vocab_size: usize, dir: &Path) -> Result<()> {
    let mut past: Vec<(u32, String)> = tok
        .get_vocab(true)
        .into_iter()
        .map(|(t, id)| (id, t))
        .chain(
            tok.get_added_tokens_decoder()
                .into_iter()
                .map(|(id, t)| (id, t.content)),
        )
        .filter(|(id, _)| *id as usize >= vocab_size)
        .collect();
    past.sort();
    past.dedup();
    if past.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = past
        .iter()
        .take(5)
        .map(|(id, t)| format!("{t:?} = {id}"))
        .collect();
    bail!(
        "{}: {} token id(s) are past the model's vocabulary (vocab_size {} in {}): {}{}; the tokenizer does not belong to this model",
        dir.join("tokenizer.json").display(),
        past.len(),
        vocab_size,
        dir.join("config.json").display(),
        shown.join(", "),
        if past.len() > 5 { ", ..." } else { "" }
    )
}
