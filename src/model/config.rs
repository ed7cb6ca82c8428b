//! `config.json` of a HF Llama/Mistral checkpoint.

use crate::model::family::{Block, Family, LayerDims, LayerParam};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The subset of a HF config that defines the Llama/Mistral forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The RoPE variant (`rope_scaling` / `rope_parameters`) and its parameters.
    pub rope: crate::model::rope::Rope,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Mistral: query i attends to keys j with i - j < window.
    pub sliding_window: Option<usize>,
    /// q/k/v projections carry a bias (Qwen2).
    #[serde(default)]
    pub qkv_bias: bool,
    /// q and k go through a per-head RMSNorm before RoPE (Qwen3).
    #[serde(default)]
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub torch_dtype: String,
    /// The original JSON, kept so a saved model round-trips every field.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// Token ids given as one number or a list (HF's `eos_token_id`): each a whole number below
/// `vocab` (when known). `what` names the key and file in errors; null or absent is none.
pub(crate) fn token_ids(
    v: Option<&serde_json::Value>,
    vocab: Option<usize>,
    what: &str,
) -> Result<Vec<u32>> {
    let items: Vec<&serde_json::Value> = match v {
        None | Some(serde_json::Value::Null) => return Ok(vec![]),
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
    };
    // A vocab_size of 0 is refused (naming it) by the caller's own check.
    let vocab = vocab.filter(|&n| n > 0);
    let limit = vocab.map_or(u32::MAX as u64, |n| n as u64);
    items
        .into_iter()
        .map(|x| match x.as_u64() {
            Some(id) if id < limit => Ok(id as u32),
            _ => {
                let range = vocab.map_or(String::new(), |n| {
                    format!(
                        " (the vocabulary has {n} tokens: 0 to {})",
                        n.saturating_sub(1)
                    )
                });
                bail!("{what}: {x} is not a token id{range}")
            }
        })
        .collect()
}

fn get_usize(v: &serde_json::Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::util::read_text(path)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(v).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        check_field_types(&v)?;
        let archs: Vec<String> = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = v
            .get("model_type")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_string();
        let family = match archs.first() {
            Some(a) => Family::by_architecture(a).with_context(|| {
                format!(
                    "unsupported architecture {a:?}: pinpoint runs {}",
                    Family::architectures().join(", ")
                )
            })?,
            None => Family::by_model_type(&model_type).with_context(|| {
                let types: Vec<&str> = crate::model::family::FAMILIES
                    .iter()
                    .map(|f| f.model_type)
                    .collect();
                format!(
                    "config has no `architectures` and model_type {model_type:?} is not {}",
                    types.join(", ")
                )
            })?,
        };
        let architecture = family.architecture.to_string();
        let need = |k: &str| get_usize(&v, k).with_context(|| format!("config lacks `{k}`"));
        let hidden_size = need("hidden_size")?;
        let num_attention_heads = need("num_attention_heads")?;
        let num_key_value_heads =
            get_usize(&v, "num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim =
            get_usize(&v, "head_dim").unwrap_or(hidden_size / num_attention_heads.max(1));
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            bail!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}");
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("head_dim {head_dim} must be even and positive for rotary embeddings");
        }
        let rope = crate::model::rope::Rope::from_config(&v, head_dim)?;
        let rope_theta = rope.theta;
        let eos_token_ids = token_ids(
            v.get("eos_token_id"),
            get_usize(&v, "vocab_size"),
            "config key `eos_token_id`",
        )?;
        let block = family.block;
        let sliding_window = if model_type == "mistral" || block.sliding_window {
            get_usize(&v, "sliding_window")
        } else {
            None
        };
        (family.check)(family, &v)?;
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()) == Some(true);
        if flag("mlp_bias") {
            bail!("config key `mlp_bias` is true: pinpoint does not run MLP biases");
        }
        if let Some(act) = v
            .get("hidden_act")
            .and_then(|x| x.as_str())
            .filter(|a| *a != "silu")
        {
            bail!("config key `hidden_act` is {act:?}: pinpoint runs SwiGLU with silu only");
        }
        let cfg = Self {
            qkv_bias: block.qkv_bias,
            qk_norm: block.qk_norm,
            architecture,
            model_type,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6),
            rope_theta,
            rope,
            max_position_embeddings: get_usize(&v, "max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            sliding_window,
            bos_token_id: get_usize(&v, "bos_token_id").map(|x| x as u32),
            eos_token_ids,
            torch_dtype: v
                .get("torch_dtype")
                .or_else(|| v.get("dtype"))
                .and_then(|s| s.as_str())
                .unwrap_or("float32")
                .to_string(),
            raw: v,
        };
        check_config(&cfg)?;
        Ok(cfg)
    }

    /// The model family's short name (`model::family`): `llama`, `mistral`, `qwen2`, ...
    pub fn family(&self) -> &'static str {
        Family::by_architecture(&self.architecture).map_or("llama", |f| f.name)
    }

    /// The block variant of this model.
    pub fn block(&self) -> Block {
        Block {
            qkv_bias: self.qkv_bias,
            sliding_window: self.sliding_window.is_some(),
            qk_norm: self.qk_norm,
        }
    }

    /// The weights of one of its layers, in checkpoint order.
    pub fn layer_params(&self) -> Vec<LayerParam> {
        LayerParam::of_block(self.block())
    }

    /// The sizes its layer weights' shapes are made of.
    pub fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            q_dim: self.q_dim(),
            kv_dim: self.kv_dim(),
            head_dim: self.head_dim,
        }
    }

    /// The attention shape every attention call of this model has.
    pub fn attn_shape(&self) -> crate::backend::AttnShape {
        crate::backend::AttnShape {
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            window: self.sliding_window,
        }
    }

    /// Query heads per key/value group.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    pub fn n_heads_total(&self) -> usize {
        self.num_hidden_layers * self.num_attention_heads
    }
    pub fn is_gqa(&self) -> bool {
        self.num_key_value_heads < self.num_attention_heads
    }

    /// The JSON to write beside saved weights (the original, with our dtype).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = if self.raw.is_object() {
            self.raw.clone()
        } else {
            serde_json::json!({})
        };
        let m = v.as_object_mut().expect("object");
        m.insert(
            "architectures".into(),
            serde_json::json!([self.architecture]),
        );
        m.insert("model_type".into(), serde_json::json!(self.model_type));
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert(
            "num_attention_heads".into(),
            self.num_attention_heads.into(),
        );
        m.insert(
            "num_key_value_heads".into(),
            self.num_key_value_heads.into(),
        );
        m.insert("head_dim".into(), self.head_dim.into());
        m.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        m.insert("rope_theta".into(), self.rope_theta.into());
        m.insert(
            "max_position_embeddings".into(),
            self.max_position_embeddings.into(),
        );
        m.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        m.insert("torch_dtype".into(), self.torch_dtype.clone().into());
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                m.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                m.insert("eos_token_id".into(), serde_json::json!(many));
            }
        }
        if self.model_type == "mistral" {
            m.insert(
                "sliding_window".into(),
                serde_json::json!(self.sliding_window),
            );
        }
        v
    }
}

/// The model header every output carries, so a file is never used with another model.
pub fn model_header(cfg: &ModelConfig, model_id: &str) -> serde_json::Value {
    serde_json::json!({
        "id": model_id,
        "architecture": cfg.architecture,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
    })
}

/// Values of a parsed `config.json` that would make the model compute garbage (NaN from a
/// negative epsilon, empty tensors from zero sizes); the error names the field.
fn check_config(c: &ModelConfig) -> Result<()> {
    for (k, v) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("max_position_embeddings", c.max_position_embeddings),
    ] {
        if v == 0 {
            bail!("`{k}` is 0; it must be positive");
        }
    }
    // A present field of the wrong type reads as absent; say so instead of using a default.
    for k in [
        "rms_norm_eps",
        "rope_theta",
        "max_position_embeddings",
        "num_key_value_heads",
        "head_dim",
        "tie_word_embeddings",
    ] {
        if let Some(v) = c.raw.get(k) {
            let ok = match k {
                "rms_norm_eps" | "rope_theta" => v.is_number(),
                "tie_word_embeddings" => v.is_boolean(),
                _ => v.is_u64(),
            };
            if !ok && !v.is_null() {
                bail!("`{k}` is {v}, not a valid value");
            }
        }
    }
    if let Some(a) = c.raw.get("architectures") {
        let ok = a
            .as_array()
            .is_some_and(|l| l.iter().all(|x| x.is_string()));
        if !ok && !a.is_null() {
            bail!("`architectures` is {a}, not a list of names");
        }
    }
    if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0) {
        bail!("`rms_norm_eps` is {}; it must be above 0", c.rms_norm_eps);
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        bail!("`rope_theta` is {}; it must be above 0", c.rope_theta);
    }
    if c.sliding_window == Some(0) {
        bail!("`sliding_window` is 0; it must be positive or null");
    }
    Ok(())
}

/// The config fields pinpoint reads as whole numbers (sizes and counts).
const COUNT_FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
];

/// Every field pinpoint reads has the JSON type it needs, or is absent/null; the error names
/// the field, its value and the type expected (`3.0` is not read as a missing field).
fn check_field_types(v: &serde_json::Value) -> Result<()> {
    if !v.is_object() {
        bail!("expected a JSON object, found {v}");
    }
    let present = |k: &str| v.get(k).filter(|x| !x.is_null());
    for k in COUNT_FIELDS {
        if let Some(x) = present(k) {
            if !x.is_u64() {
                bail!("`{k}` is {x}; it must be a whole number (an integer, 0 or more, written without a decimal point)");
            }
        }
    }
    if let Some(x) = present("bos_token_id") {
        if x.as_u64().is_none_or(|i| i > u32::MAX as u64) {
            bail!("`bos_token_id` is {x}; it must be a token id (an integer, 0 or more)");
        }
    }
    for k in ["rms_norm_eps", "rope_theta"] {
        if let Some(x) = present(k).filter(|x| !x.is_number()) {
            bail!("`{k}` is {x}; it must be a number");
        }
    }
    for k in [
        "tie_word_embeddings",
        "use_sliding_window",
        "attention_bias",
        "mlp_bias",
    ] {
        if let Some(x) = present(k).filter(|x| !x.is_boolean()) {
            bail!("`{k}` is {x}; it must be true or false");
        }
    }
    for k in ["model_type", "hidden_act", "torch_dtype"] {
        if let Some(x) = present(k).filter(|x| !x.is_string()) {
            bail!("`{k}` is {x}; it must be a string");
        }
    }
    Ok(())
}
