//! GGUF to a HF directory: tensor names, the q/k row order, the tokenizer files and the
//! config, derived the way transformers' own GGUF loader derives them.

use super::GgufFile;
use crate::model::checkpoint::{save_safetensors, HostTensor, StoreDtype};
use crate::util::write_json;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// HF name of a llama.cpp tensor name, or None for tensors HF Llama has no place for.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let base = gguf_name.strip_suffix(".weight")?;
    match base {
        "token_embd" => return Some("model.embed_tokens.weight".into()),
        "output_norm" => return Some("model.norm.weight".into()),
        "output" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Undo llama.cpp's rotary row permutation of a q or k weight (row-major `[rows, cols]`,
/// `n_head` heads): HF = `w.reshape(n, rows/n/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn unpermute_rows(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    let (rows, cols) = match w.shape.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        s => bail!("expected a 2-d q/k weight, got shape {s:?}"),
    };
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        bail!("q/k weight has {rows} rows, not a multiple of 2 x {n_head} heads");
    }
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let dst = h * 2 * half + i * half + j;
                let src = h * 2 * half + j * 2 + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&w.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(HostTensor::new(w.shape.clone(), out))
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

/// The special-token strings, and tokenizer files, that transformers builds from a GGUF.
struct TokenizerFiles {
    tokenizer_json: Value,
    tokenizer_config: Value,
}

fn token_of(tokens: &[&str], id: Option<u64>) -> Option<String> {
    id.and_then(|i| tokens.get(i as usize))
        .map(|s| s.to_string())
}

/// Build `tokenizer.json` + `tokenizer_config.json` the way transformers' GGUF tokenizer
/// conversion does, for a byte-level BPE (`tokenizer.ggml.model = "gpt2"`) or a sentencepiece
/// (`"llama"`: Llama-2, Mistral) vocabulary.
fn build_tokenizer(g: &GgufFile) -> Result<TokenizerFiles> {
    let file = g.path.display();
    let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" && model != "llama" {
        bail!(
            "{file}: tokenizer.ggml.model {model:?} is not supported (pinpoint imports byte-level BPE \
             \"gpt2\" and sentencepiece \"llama\" vocabularies)"
        );
    }
    let sentencepiece = model == "llama";
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
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    // A sentencepiece vocabulary is used as the file spells it; a byte-level one in the byte
    // alphabet.
    let in_alphabet = |t: &str| sentencepiece || t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(key, json!(i));
    }
    let merges: Vec<Value> = match g.get_str_array("tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .map(|m| {
                let parts: Vec<&str> = m.split(' ').collect();
                match parts.as_slice() {
                    [a, b] => Ok(json!([a, b])),
                    _ => bail!("{file}: merge {m:?} is not two tokens separated by one space"),
                }
            })
            .collect::<Result<_>>()?,
        None if sentencepiece => {
            let scores: Vec<f64> = g
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.as_array())
                .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
                .with_context(|| {
                    format!("{file}: a sentencepiece vocabulary without merges needs tokenizer.ggml.scores (numbers)")
                })?;
            if scores.len() != tokens.len() {
                bail!(
                    "{file}: {} tokenizer.ggml.scores for {} tokens",
                    scores.len(),
                    tokens.len()
                );
            }
            merges_from_scores(&tokens, &scores)
        }
        None => bail!("{file}: no tokenizer.ggml.merges"),
    };

    let id = |k: &str| g.get_u64(&format!("tokenizer.ggml.{k}"));
    let bos = token_of(&tokens, id("bos_token_id"));
    let eos = token_of(&tokens, id("eos_token_id"));
    let unk = token_of(&tokens, id("unknown_token_id"));
    let pad = token_of(&tokens, id("padding_token_id"));
    // transformers: a sentencepiece vocabulary adds BOS unless the file says otherwise.
    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(sentencepiece)
        && bos.is_some();
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos.is_some();

    let mut added = added_tokens(&tokens, &types, &vocab, &in_alphabet);
    if sentencepiece {
        // LlamaTokenizer registers its unk/bos/eos (and pad) as special tokens too.
        let named: Vec<&str> = [&unk, &bos, &eos, &pad]
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

    let split = LLAMA3_PRES.contains(&pre).then(|| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    });
    let (pre_tokenizer, decoder, bpe) = if sentencepiece {
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
    };

    let post_processor = post_processor(
        add_bos,
        add_eos,
        (&bos, id("bos_token_id")),
        (&eos, id("eos_token_id")),
    );

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
    let mut cfg = serde_json::Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("unk_token", &unk),
        ("pad_token", &pad),
    ] {
        cfg.insert(k.into(), json!(v));
    }
    if let Some(t) = g.get_str("tokenizer.chat_template") {
        cfg.insert("chat_template".into(), json!(t));
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: Value::Object(cfg),
    })
}

/// The merges a sentencepiece vocabulary implies, as transformers' `generate_merges(vocab,
/// scores)` derives them: every split of a token into two tokens of the vocabulary, per token
/// in the order of the scores' dict (first appearance) sorted by the parts' ids, then all of
/// them stably sorted by (score, left length, right length), best first. `vocab` maps a token
/// to its last id, the scores' dict to its last score, as Python dicts built from the lists do.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<Value> {
    use std::collections::HashMap;
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

fn added_token(id: u64, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// The added tokens of tokenizer.json: special ones (type 3) spelled in the byte alphabet,
/// then user-defined ones (type 4), each once, in id order.
fn added_tokens(
    tokens: &[&str],
    types: &[i64],
    vocab: &serde_json::Map<String, Value>,
    in_alphabet: &dyn Fn(&str) -> bool,
) -> Vec<Value> {
    let mut added: Vec<(u64, Value)> = vec![];
    let mut seen = std::collections::HashSet::new();
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
    let mut special_tokens = serde_json::Map::new();
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

/// `config.json` for the model, with the values transformers derives from the same GGUF.
fn build_config(g: &GgufFile) -> Result<Value> {
    let file = g.path.display();
    let arch = g
        .get_str("general.architecture")
        .with_context(|| format!("{file}: no general.architecture"))?;
    let name = g.get_str("general.name").unwrap_or("");
    // transformers treats a llama-architecture file named exactly "mistral" as Mistral.
    let (model_type, architecture) = match arch {
        "mistral" => ("mistral", "MistralForCausalLM"),
        "llama" if name == "mistral" => ("mistral", "MistralForCausalLM"),
        "llama" => ("llama", "LlamaForCausalLM"),
        other => bail!("{file}: general.architecture {other:?} is not supported (pinpoint imports llama and mistral)"),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| {
        g.get_u64(&key(k))
            .with_context(|| format!("{file}: metadata {} is missing", key(k)))
    };
    if let Some(t) = g
        .get_str(&key("rope.scaling.type"))
        .filter(|t| *t != "none")
    {
        bail!(
            "{file}: metadata {} is {t:?}: pinpoint does not import RoPE scaling from GGUF (use the HF checkpoint, whose config.json has rope_scaling)",
            key("rope.scaling.type")
        );
    }
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = g.get_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    if heads == 0 {
        bail!("{file}: attention.head_count is 0");
    }
    let head_dim = g
        .get_u64(&key("rope.dimension_count"))
        .unwrap_or(hidden / heads);
    let vocab = match g.get_u64(&key("vocab_size")) {
        Some(v) => v,
        None => g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .with_context(|| {
                format!(
                    "{file}: neither {} nor tokenizer.ggml.tokens",
                    key("vocab_size")
                )
            })?,
    };
    let rope_theta = g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
    let eps = g
        .get_f64(&key("attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-6);
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([architecture]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert(
        "rope_parameters".into(),
        json!({"rope_theta": rope_theta, "rope_type": "default"}),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(g.get_u64(&key("context_length")).unwrap_or(2048)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor_info("output.weight").is_none()),
    );
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("torch_dtype".into(), json!("float32"));
    if model_type == "mistral" {
        // Not stored in GGUF; MistralConfig's default, which transformers falls back to.
        c.insert("sliding_window".into(), json!(4096));
    }
    for (hf, k) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("unk_token_id", "unknown_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(v) = g.get_u64(&format!("tokenizer.ggml.{k}")) {
            c.insert(hf.into(), json!(v));
        }
    }
    Ok(Value::Object(c))
}

/// Import a GGUF Llama/Mistral model into a HF directory at `out_dir`: `config.json`,
/// `model.safetensors` (F32, exact dequantized values), `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`. The files are built in a temp dir beside
/// `out_dir` and moved into place only when all are written (a missing or empty `out_dir` is
/// replaced by one rename; files in a non-empty one are replaced one by one).
pub fn import_gguf(gguf: &Path, out_dir: &Path, show_progress: bool) -> Result<()> {
    let g = GgufFile::open(gguf)?;
    let file = gguf.display();
    let config = build_config(&g)?;
    crate::model::config::ModelConfig::from_json(config.clone())
        .with_context(|| format!("{file}: the derived config is not one pinpoint can run"))?;
    if g.tensor_info("rope_freqs.weight").is_some() {
        // llama.cpp stores Llama-3.1's llama3 RoPE scaling as per-frequency factors in this
        // tensor, which has no place in a HF checkpoint (transformers drops it, and runs plain
        // RoPE): refuse rather than import a model with other frequencies.
        bail!(
            "{file}: tensor rope_freqs.weight holds RoPE frequency factors (Llama-3.1's llama3 scaling); \
             pinpoint does not import them from GGUF: use the HF checkpoint, whose config.json has rope_scaling"
        );
    }
    let tok = build_tokenizer(&g)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;

    let bar = crate::util::bar(
        g.tensors().len() as u64,
        "importing GGUF {bar:40} {pos}/{len} {msg}",
        show_progress,
    );
    let mut out: Vec<(String, HostTensor)> = Vec::new();
    for t in g.tensors() {
        bar.set_message(t.name.clone());
        bar.inc(1);
        let Some(hf) = hf_tensor_name(&t.name) else {
            if show_progress {
                bar.println(format!(
                    "skipping GGUF tensor {:?} (no HF Llama counterpart)",
                    t.name
                ));
            }
            continue;
        };
        let mut w = g.tensor_f32(&t.name)?;
        if t.name.ends_with(".attn_q.weight") || t.name.ends_with(".attn_k.weight") {
            let n = if t.name.ends_with(".attn_q.weight") {
                heads
            } else {
                kv_heads
            };
            w = unpermute_rows(&w, n).with_context(|| format!("{file}: tensor {:?}", t.name))?;
        }
        out.push((hf, w));
    }
    bar.finish_and_clear();
    if !out.iter().any(|(n, _)| n == "model.embed_tokens.weight") {
        bail!("{file}: no token_embd.weight tensor");
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Build everything in a temp dir beside `out_dir`, then move it into place, so a failure
    // never leaves a half-written model.
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pinpoint-import-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    let write_all = |dir: &Path| -> Result<()> {
        let named: Vec<(String, &HostTensor)> = out.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors(&dir.join("model.safetensors"), &named, StoreDtype::F32)?;
        drop(named);
        drop(out);
        write_json(&dir.join("config.json"), &config)?;
        write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
        write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config)?;
        let mut gen = serde_json::Map::new();
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(k) {
                gen.insert(k.into(), v.clone());
            }
        }
        write_json(&dir.join("generation_config.json"), &Value::Object(gen))?;
        Ok(())
    };
    write_all(tmp.path())?;
    let empty_or_missing = match std::fs::read_dir(out_dir) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => !out_dir.exists(),
    };
    if empty_or_missing {
        let _ = std::fs::remove_dir(out_dir);
        let kept = tmp.keep();
        std::fs::rename(&kept, out_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&kept);
            anyhow::Error::new(e).context(format!(
                "renaming {} to {}",
                kept.display(),
                out_dir.display()
            ))
        })?;
    } else {
        // An existing directory with other files: replace ours file by file (each rename is atomic).
        for entry in std::fs::read_dir(tmp.path())? {
            let entry = entry?;
            let to = out_dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("moving {} into place", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_matches_numpy_formula() {
        // rows = 8, 2 heads, half = 2: rows within a head go [0,2,1,3].
        let w = HostTensor::new(vec![8, 1], (0..8).map(|x| x as f32).collect());
        let u = unpermute_rows(&w, 2).unwrap();
        assert_eq!(u.data, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn names_map() {
        assert_eq!(
            hf_tensor_name("blk.3.attn_k.weight").unwrap(),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(hf_tensor_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_tensor_name("rope_freqs.weight").is_none());
    }
}
