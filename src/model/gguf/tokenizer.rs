//! A GGUF's vocabulary as the HF tokenizer files transformers' GGUF tokenizer conversion
//! writes: `tokenizer.json` (vocabulary, merges, added tokens, pre-tokenizer, decoder,
//! post-processor) and `tokenizer_config.json`, for a byte-level BPE
//! (`tokenizer.ggml.model = "gpt2"`) or a sentencepiece (`"llama"`: Llama-2, Mistral) one.

use super::GgufFile;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// llama-3 style split regex for the pre-tokenizer names transformers maps to it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PRES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
];
/// Pre-tokenizer names transformers gives another split regex that we do not reproduce yet.
const OTHER_PRES: &[&str] = &[
    "tekken",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "qwen35",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
];

/// The tokenizer files transformers builds from a GGUF.
pub(super) struct TokenizerFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
}

/// The vocabulary of a GGUF as its metadata lists it.
struct GgufVocab<'a> {
    /// `tokenizer.ggml.model` is `"llama"` (else `"gpt2"`, byte-level BPE).
    sentencepiece: bool,
    /// Token strings, by id.
    tokens: Vec<&'a str>,
    /// `tokenizer.ggml.token_type` per id (3 control, 4 user-defined); may be empty.
    types: Vec<i64>,
    /// `tokenizer.ggml.pre`, the pre-tokenizer's name.
    pre: &'a str,
}

/// The special tokens the GGUF names, and whether encoding adds BOS / EOS.
struct Specials {
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    pad: Option<String>,
    bos_id: Option<u64>,
    eos_id: Option<u64>,
    add_bos: bool,
    add_eos: bool,
}

/// Build `tokenizer.json` + `tokenizer_config.json` the way transformers' GGUF tokenizer
/// conversion does.
pub(super) fn build_tokenizer(g: &GgufFile) -> Result<TokenizerFiles> {
    let v = read_vocab(g)?;
    let bytes = ByteSpelling::new(v.sentencepiece);
    let vocab = vocab_json(&v.tokens, &bytes);
    let merges = read_merges(g, &v)?;
    let s = read_specials(g, &v.tokens, v.sentencepiece);
    let mut added = added_tokens(&v.tokens, &v.types, &vocab, &|t| bytes.is_spelled(t));
    if v.sentencepiece {
        add_named_specials(&mut added, &vocab, &s);
    }
    let (pre_tokenizer, decoder, bpe) = pipeline(v.sentencepiece, v.pre, vocab, merges);
    let post_processor =
        post_processor(s.add_bos, s.add_eos, (&s.bos, s.bos_id), (&s.eos, s.eos_id));
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": bpe
    });
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: tokenizer_config(g, &s),
    })
}

/// The vocabulary's kind, tokens, token types and pre-tokenizer; an error names what the
/// file lacks or what pinpoint does not import.
fn read_vocab(g: &GgufFile) -> Result<GgufVocab<'_>> {
    let file = g.path.display();
    let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" && model != "llama" {
        bail!(
            "{file}: tokenizer.ggml.model {model:?} is not supported (pinpoint imports byte-level BPE \
             \"gpt2\" and sentencepiece \"llama\" vocabularies)"
        );
    }
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")?
        .with_context(|| format!("{file}: no tokenizer.ggml.tokens"))?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_i64()).collect::<Option<Vec<_>>>())
            .with_context(|| {
                format!("{file}: tokenizer.ggml.token_type is not an integer array")
            })?,
        None => vec![],
    };
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
    if OTHER_PRES.contains(&pre) {
        bail!("{file}: pre-tokenizer {pre:?} is not supported yet");
    }
    Ok(GgufVocab {
        sentencepiece: model == "llama",
        tokens,
        types,
        pre,
    })
}

/// How a token string is spelled in tokenizer.json: a sentencepiece vocabulary as the file
/// spells it; a byte-level one in the GPT-2 byte alphabet (a token already in that alphabet
/// as it is, any other byte by byte).
struct ByteSpelling {
    sentencepiece: bool,
    /// The GPT-2 byte-to-unicode table: byte b is spelled `spelling[b]`.
    spelling: [char; 256],
    alphabet: HashSet<char>,
}

impl ByteSpelling {
    fn new(sentencepiece: bool) -> Self {
        let spelling = bytes_to_unicode();
        let alphabet = spelling.iter().copied().collect();
        Self {
            sentencepiece,
            spelling,
            alphabet,
        }
    }

    /// The token is used as the file spells it.
    fn is_spelled(&self, t: &str) -> bool {
        self.sentencepiece || t.chars().all(|c| self.alphabet.contains(&c))
    }

    fn spell(&self, t: &str) -> String {
        if self.is_spelled(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| self.spelling[b as usize]).collect()
        }
    }
}

/// The GPT-2 byte-to-unicode table (printable bytes map to themselves, the rest to U+0100...).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// The BPE model's `vocab`: spelled token -> id (a token spelled twice keeps its last id).
fn vocab_json(tokens: &[&str], bytes: &ByteSpelling) -> Map<String, Value> {
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(bytes.spell(t), json!(i));
    }
    vocab
}

/// The BPE merges as `[left, right]` pairs: `tokenizer.ggml.merges` where the file has
/// them, else (sentencepiece only) derived from `tokenizer.ggml.scores`.
fn read_merges(g: &GgufFile, v: &GgufVocab) -> Result<Vec<Value>> {
    let file = g.path.display();
    match g.get_str_array("tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(' ').collect();
                match parts.as_slice() {
                    [a, b] => Ok(json!([a, b])),
                    _ => bail!("{file}: merge {m:?} is not two tokens separated by one space"),
                }
            })
            .collect(),
        None if v.sentencepiece => {
            let scores: Vec<f64> = g
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.as_array())
                .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
                .with_context(|| {
                    format!("{file}: a sentencepiece vocabulary without merges needs tokenizer.ggml.scores (numbers)")
                })?;
            if scores.len() != v.tokens.len() {
                bail!(
                    "{file}: {} tokenizer.ggml.scores for {} tokens",
                    scores.len(),
                    v.tokens.len()
                );
            }
            Ok(merges_from_scores(&v.tokens, &scores))
        }
        None => bail!("{file}: no tokenizer.ggml.merges"),
    }
}

/// The merges a sentencepiece vocabulary implies, as transformers' `generate_merges(vocab,
/// scores)` derives them: every split of a token into two tokens of the vocabulary, per token
/// in the order of the scores' dict (first appearance) sorted by the parts' ids, then all of
/// them stably sorted by (score, left length, right length), best first. `vocab` maps a token
/// to its last id, the scores' dict to its last score, as Python dicts built from the lists do.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<Value> {
    let mut id: HashMap<&str, usize> = HashMap::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    let mut order: Vec<&str> = vec![];
    for (i, (&t, &s)) in tokens.iter().zip(scores).enumerate() {
        id.insert(t, i);
        if score.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = vec![];
    for &t in &order {
        let mut local: Vec<(&str, &str, f64)> = t
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&t[..i], &t[i..]))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (id[l], id[r]));
        merges.extend(local);
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

fn token_of(tokens: &[&str], id: Option<u64>) -> Option<String> {
    id.and_then(|i| tokens.get(i as usize))
        .map(|s| s.to_string())
}

/// The bos/eos/unk/pad tokens the GGUF names by id, and whether encoding adds BOS / EOS.
fn read_specials(g: &GgufFile, tokens: &[&str], sentencepiece: bool) -> Specials {
    let id = |k: &str| g.get_u64(&format!("tokenizer.ggml.{k}"));
    let (bos_id, eos_id) = (id("bos_token_id"), id("eos_token_id"));
    let bos = token_of(tokens, bos_id);
    let eos = token_of(tokens, eos_id);
    // transformers: a sentencepiece vocabulary adds BOS unless the file says otherwise.
    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(sentencepiece)
        && bos.is_some();
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos.is_some();
    Specials {
        unk: token_of(tokens, id("unknown_token_id")),
        pad: token_of(tokens, id("padding_token_id")),
        bos,
        eos,
        bos_id,
        eos_id,
        add_bos,
        add_eos,
    }
}

fn added_token(id: u64, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// The added tokens of tokenizer.json: special ones (type 3) spelled in the byte alphabet,
/// then user-defined ones (type 4), each once, in id order.
fn added_tokens(
    tokens: &[&str],
    types: &[i64],
    vocab: &Map<String, Value>,
    in_alphabet: &dyn Fn(&str) -> bool,
) -> Vec<Value> {
    let mut added: Vec<(u64, Value)> = vec![];
    let mut seen = HashSet::new();
    for (special, want_type) in [(true, 3), (false, 4)] {
        for (t, ty) in tokens.iter().zip(types.iter()) {
            if *ty != want_type || (special && !in_alphabet(t)) {
                continue;
            }
            let Some(id) = vocab.get(*t).and_then(|v| v.as_u64()) else {
                continue;
            };
            if !seen.insert(t.to_string()) {
                continue;
            }
            added.push((id, added_token(id, t, special)));
        }
    }
    added.sort_by_key(|(id, _)| *id);
    added.into_iter().map(|(_, v)| v).collect()
}

/// LlamaTokenizer registers its unk/bos/eos (and pad) as special tokens too: add those not
/// yet in `added`, keeping it in id order.
fn add_named_specials(added: &mut Vec<Value>, vocab: &Map<String, Value>, s: &Specials) {
    let named: Vec<&str> = [&s.unk, &s.bos, &s.eos, &s.pad]
        .iter()
        .filter_map(|t| t.as_deref())
        .collect();
    for t in named {
        if added.iter().any(|a| a["content"] == t) {
            continue;
        }
        if let Some(i) = vocab.get(t).and_then(|v| v.as_u64()) {
            added.push(added_token(i, t, true));
        }
    }
    added.sort_by_key(|a| a["id"].as_u64());
}

/// tokenizer.json's `(pre_tokenizer, decoder, model)`: the llama-3 split for the
/// pre-tokenizer names transformers maps to it, else Metaspace (sentencepiece) or ByteLevel;
/// a sentencepiece BPE falls back to bytes, a byte-level one needs none.
fn pipeline(
    sentencepiece: bool,
    pre: &str,
    vocab: Map<String, Value>,
    merges: Vec<Value>,
) -> (Value, Value, Value) {
    let split = LLAMA3_PRES.contains(&pre).then(|| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    });
    if sentencepiece {
        (
            split.unwrap_or_else(|| {
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false})
            }),
            json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]}),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }),
        )
    } else {
        (
            split.unwrap_or_else(|| {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }),
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
            json!({
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }),
        )
    }
}

/// The post-processor of tokenizer.json: TemplateProcessing as transformers'
/// `update_post_processor` writes it (BOS/EOS around each sequence where the GGUF adds them).
fn post_processor(
    add_bos: bool,
    add_eos: bool,
    (bos, bos_id): (&Option<String>, Option<u64>),
    (eos, eos_id): (&Option<String>, Option<u64>),
) -> Value {
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let spec = |tok: &str, type_id: u32| json!({"SpecialToken": {"id": tok, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut special_tokens = Map::new();
    for (type_id, side, out) in [(0u32, "A", &mut single), (1u32, "B", &mut pair)] {
        if add_bos {
            out.push(spec(bos.as_deref().unwrap_or(""), type_id));
        }
        out.push(seq(side, type_id));
        if add_eos {
            out.push(spec(eos.as_deref().unwrap_or(""), type_id));
        }
    }
    let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
    for (on, tok, tid) in [(add_bos, bos, bos_id), (add_eos, eos, eos_id)] {
        if let (true, Some(t), Some(i)) = (on, tok, tid) {
            special_tokens.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
        }
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

/// `tokenizer_config.json`: the fast tokenizer class, BOS/EOS adding, the special tokens
/// and the GGUF's chat template.
fn tokenizer_config(g: &GgufFile, s: &Specials) -> Value {
    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(s.add_bos));
    cfg.insert("add_eos_token".into(), json!(s.add_eos));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in [
        ("bos_token", &s.bos),
        ("eos_token", &s.eos),
        ("unk_token", &s.unk),
        ("pad_token", &s.pad),
    ] {
        cfg.insert(k.into(), json!(v));
    }
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    Value::Object(cfg)
}
