//! Model families, each described once: its `config.json` names (`architectures`,
//! `model_type`), its block variant (what its decoder layer has beyond Llama's), the chat
//! formats its instruct checkpoints ship, the config keys it refuses and its GGUF
//! architecture name; and the names (HF's and llama.cpp's GGUF ones) and shapes of the
//! weights a layer of each block variant has. `config.rs`, `checkpoint.rs` (load, save),
//! `mask.rs` (what trains), `layer.rs` (the forward) and `gguf/import.rs` read them here;
//! docs/architecture.md ("Adding a model family") says what else a new family needs.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a family's decoder block has beyond Llama's (RMSNorm, q/k/v/o without biases,
/// rotate-half RoPE, causal attention, SwiGLU MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Block {
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// `sliding_window` of config.json applies (Mistral).
    pub sliding_window: bool,
    /// q and k go through an RMSNorm per head (weights `[D]`) before RoPE (Qwen3).
    pub qk_norm: bool,
}

/// One model family.
#[derive(Debug)]
pub struct Family {
    /// Short name (`pinpoint inspect`): `llama`.
    pub name: &'static str,
    /// Its name in messages: `Llama`.
    pub title: &'static str,
    /// `architectures[0]` of config.json.
    pub architecture: &'static str,
    /// `model_type` of config.json (read when `architectures` is absent).
    pub model_type: &'static str,
    /// llama.cpp's `general.architecture` for it, where `pinpoint import` reads its GGUF
    /// files (tensors named by [`Weight::gguf_name`]); None: not imported from GGUF.
    pub gguf_architecture: Option<&'static str>,
    pub block: Block,
    /// The chat formats its instruct checkpoints' templates write, as
    /// `Tokenizer::chat_format` names them (the checkpoint's own template is what runs).
    pub chat_formats: &'static [&'static str],
    /// Config keys this family refuses, beyond the checks every family gets
    /// (`config::ModelConfig::from_json`); the error names the key.
    pub check: fn(&Family, &Value) -> Result<()>,
}

/// Every family pinpoint runs (a static: one table, so a family found by name is the same
/// entry wherever it is looked up).
pub static FAMILIES: &[Family] = &[
    Family {
        name: "llama",
        title: "Llama",
        architecture: "LlamaForCausalLM",
        model_type: "llama",
        gguf_architecture: Some("llama"),
        block: Block {
            qkv_bias: false,
            sliding_window: false,
            qk_norm: false,
        },
        chat_formats: &["llama2", "llama3", "chatml"],
        check: no_attention_bias,
    },
    Family {
        name: "mistral",
        title: "Mistral",
        architecture: "MistralForCausalLM",
        model_type: "mistral",
        gguf_architecture: Some("mistral"),
        block: Block {
            qkv_bias: false,
            sliding_window: true,
            qk_norm: false,
        },
        chat_formats: &["mistral", "mistral-control"],
        check: no_attention_bias,
    },
    Family {
        name: "qwen2",
        title: "Qwen2",
        architecture: "Qwen2ForCausalLM",
        model_type: "qwen2",
        gguf_architecture: None,
        block: Block {
            qkv_bias: true,
            sliding_window: false,
            qk_norm: false,
        },
        chat_formats: &["qwen", "chatml"],
        check: full_attention_only,
    },
    Family {
        name: "qwen3",
        title: "Qwen3",
        architecture: "Qwen3ForCausalLM",
        model_type: "qwen3",
        gguf_architecture: None,
        block: Block {
            qkv_bias: false,
            sliding_window: false,
            qk_norm: true,
        },
        chat_formats: &["chatml"],
        check: |f, v| {
            no_attention_bias(f, v)?;
            full_attention_only(f, v)
        },
    },
];

impl Family {
    /// The family of `architectures[0]`.
    pub fn by_architecture(architecture: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.architecture == architecture)
    }
    /// The family of a `model_type`.
    pub fn by_model_type(model_type: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.model_type == model_type)
    }
    /// The architectures pinpoint runs, for messages.
    pub fn architectures() -> Vec<&'static str> {
        FAMILIES.iter().map(|f| f.architecture).collect()
    }
}

fn flag(v: &Value, k: &str) -> bool {
    v.get(k).and_then(|x| x.as_bool()) == Some(true)
}

/// `attention_bias` (biases on q/k/v and o_proj) is refused.
fn no_attention_bias(_: &Family, v: &Value) -> Result<()> {
    if flag(v, "attention_bias") {
        bail!("config key `attention_bias` is true (biases on q/k/v and o_proj): pinpoint runs q/k/v biases only, as Qwen2ForCausalLM has them");
    }
    Ok(())
}

/// Qwen's sliding-window layers are refused: full attention only.
fn full_attention_only(f: &Family, v: &Value) -> Result<()> {
    if flag(v, "use_sliding_window") {
        bail!(
            "config key `use_sliding_window` is true: pinpoint runs {} with full attention only",
            f.title
        );
    }
    let sliding_layers = v
        .get("layer_types")
        .and_then(|x| x.as_array())
        .is_some_and(|a| a.iter().any(|t| t.as_str() != Some("full_attention")));
    if sliding_layers {
        bail!(
            "config key `layer_types` lists layers other than full_attention: pinpoint runs {} with full attention only",
            f.title
        );
    }
    Ok(())
}

/// HF name of the token embedding.
pub const EMBED_NAME: &str = "model.embed_tokens.weight";
/// HF name of the final norm's weight.
pub const FINAL_NORM_NAME: &str = "model.norm.weight";
/// HF name of an untied unembedding.
pub const LM_HEAD_NAME: &str = "lm_head.weight";

/// HF name of weight `p` of layer `l`.
pub fn layer_tensor_name(l: usize, p: LayerParam) -> String {
    format!("model.layers.{l}.{}", p.hf_name())
}

/// A weight of the model by its role, with the names the two checkpoint formats give it:
/// HF's (safetensors) and llama.cpp's (GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    Embed,
    FinalNorm,
    /// An untied unembedding.
    LmHead,
    Layer(usize, LayerParam),
}

impl Weight {
    /// The weights outside the layers.
    pub const OUTSIDE_LAYERS: [Weight; 3] = [Weight::Embed, Weight::FinalNorm, Weight::LmHead];

    /// HF name.
    pub fn hf_name(self) -> String {
        match self {
            Weight::Embed => EMBED_NAME.into(),
            Weight::FinalNorm => FINAL_NORM_NAME.into(),
            Weight::LmHead => LM_HEAD_NAME.into(),
            Weight::Layer(l, p) => layer_tensor_name(l, p),
        }
    }

    /// llama.cpp's name in a GGUF file.
    pub fn gguf_name(self) -> String {
        match self {
            Weight::Embed => "token_embd.weight".into(),
            Weight::FinalNorm => "output_norm.weight".into(),
            Weight::LmHead => "output.weight".into(),
            Weight::Layer(l, p) => format!("blk.{l}.{}", p.gguf_name()),
        }
    }

    /// The weight a GGUF tensor `name` is in a model whose layers are of `block`; None for
    /// a tensor such a HF checkpoint has no place for.
    pub fn from_gguf_name(name: &str, block: Block) -> Option<Weight> {
        if let Some(w) = Weight::OUTSIDE_LAYERS
            .into_iter()
            .find(|w| w.gguf_name() == name)
        {
            return Some(w);
        }
        let (layer, part) = name.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        LayerParam::of_block(block)
            .into_iter()
            .find(|p| p.gguf_name() == part)
            .map(|p| Weight::Layer(layer, p))
    }
}

/// A weight of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LayerParam {
    AttnNorm,
    Q,
    K,
    V,
    O,
    MlpNorm,
    Gate,
    Up,
    Down,
    /// q/k/v biases (Qwen2), held as `[1, out]` rows: a head's part is a column region.
    QBias,
    KBias,
    VBias,
    /// Per-head q/k RMSNorm weights `[D]` (Qwen3), shared by every head of the layer.
    QNorm,
    KNorm,
}

/// The sizes a layer weight's shape is made of.
#[derive(Debug, Clone, Copy)]
pub struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    /// `H * D`.
    pub q_dim: usize,
    /// `G * D`.
    pub kv_dim: usize,
    /// `D`.
    pub head_dim: usize,
}

impl LayerParam {
    /// The weights every block has, in checkpoint order.
    pub const ALL: [LayerParam; 9] = [
        LayerParam::AttnNorm,
        LayerParam::Q,
        LayerParam::K,
        LayerParam::V,
        LayerParam::O,
        LayerParam::MlpNorm,
        LayerParam::Gate,
        LayerParam::Up,
        LayerParam::Down,
    ];
    /// The q/k/v biases, in that order.
    pub const BIASES: [LayerParam; 3] = [LayerParam::QBias, LayerParam::KBias, LayerParam::VBias];

    /// The weights a layer of `block` has, in checkpoint order.
    pub fn of_block(block: Block) -> Vec<LayerParam> {
        let mut ps = LayerParam::ALL.to_vec();
        if block.qkv_bias {
            ps.extend(LayerParam::BIASES);
        }
        if block.qk_norm {
            ps.extend([LayerParam::QNorm, LayerParam::KNorm]);
        }
        ps
    }

    /// HF name inside `model.layers.{l}.`.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerParam::AttnNorm => "input_layernorm.weight",
            LayerParam::Q => "self_attn.q_proj.weight",
            LayerParam::K => "self_attn.k_proj.weight",
            LayerParam::V => "self_attn.v_proj.weight",
            LayerParam::O => "self_attn.o_proj.weight",
            LayerParam::MlpNorm => "post_attention_layernorm.weight",
            LayerParam::Gate => "mlp.gate_proj.weight",
            LayerParam::Up => "mlp.up_proj.weight",
            LayerParam::Down => "mlp.down_proj.weight",
            LayerParam::QBias => "self_attn.q_proj.bias",
            LayerParam::KBias => "self_attn.k_proj.bias",
            LayerParam::VBias => "self_attn.v_proj.bias",
            LayerParam::QNorm => "self_attn.q_norm.weight",
            LayerParam::KNorm => "self_attn.k_norm.weight",
        }
    }

    /// llama.cpp's name inside `blk.{l}.` of a GGUF file.
    pub fn gguf_name(self) -> &'static str {
        match self {
            LayerParam::AttnNorm => "attn_norm.weight",
            LayerParam::Q => "attn_q.weight",
            LayerParam::K => "attn_k.weight",
            LayerParam::V => "attn_v.weight",
            LayerParam::O => "attn_output.weight",
            LayerParam::MlpNorm => "ffn_norm.weight",
            LayerParam::Gate => "ffn_gate.weight",
            LayerParam::Up => "ffn_up.weight",
            LayerParam::Down => "ffn_down.weight",
            LayerParam::QBias => "attn_q.bias",
            LayerParam::KBias => "attn_k.bias",
            LayerParam::VBias => "attn_v.bias",
            LayerParam::QNorm => "attn_q_norm.weight",
            LayerParam::KNorm => "attn_k_norm.weight",
        }
    }

    /// Shape as held (`[out, in]` for matrices, `[d]` for norms, `[1, out]` for biases).
    pub fn shape(self, d: &LayerDims) -> Vec<usize> {
        match self {
            LayerParam::AttnNorm | LayerParam::MlpNorm => vec![d.hidden],
            LayerParam::Q => vec![d.q_dim, d.hidden],
            LayerParam::K | LayerParam::V => vec![d.kv_dim, d.hidden],
            LayerParam::O => vec![d.hidden, d.q_dim],
            LayerParam::Gate | LayerParam::Up => vec![d.intermediate, d.hidden],
            LayerParam::Down => vec![d.hidden, d.intermediate],
            LayerParam::QBias => vec![1, d.q_dim],
            LayerParam::KBias | LayerParam::VBias => vec![1, d.kv_dim],
            LayerParam::QNorm | LayerParam::KNorm => vec![d.head_dim],
        }
    }

    /// Shape as a checkpoint stores it: [`LayerParam::shape`], but a bias is `[out]`.
    pub fn stored_shape(self, d: &LayerDims) -> Vec<usize> {
        match self.shape(d).as_slice() {
            [1, n] if self.is_bias() => vec![*n],
            s => s.to_vec(),
        }
    }

    fn is_bias(self) -> bool {
        LayerParam::BIASES.contains(&self)
    }

    /// Part of the attention block (else the MLP block).
    pub fn is_attn(self) -> bool {
        matches!(
            self,
            LayerParam::AttnNorm
                | LayerParam::Q
                | LayerParam::K
                | LayerParam::V
                | LayerParam::O
                | LayerParam::QBias
                | LayerParam::KBias
                | LayerParam::VBias
                | LayerParam::QNorm
                | LayerParam::KNorm
        )
    }

    /// Parse a projection name: q, k, v, o, gate, up, down.
    pub fn parse_proj(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "q" | "q_proj" => LayerParam::Q,
            "k" | "k_proj" => LayerParam::K,
            "v" | "v_proj" => LayerParam::V,
            "o" | "o_proj" => LayerParam::O,
            "gate" | "gate_proj" => LayerParam::Gate,
            "up" | "up_proj" => LayerParam::Up,
            "down" | "down_proj" => LayerParam::Down,
            other => bail!("unknown projection {other:?} (expected q, k, v, o, gate, up, down)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family is found by its architecture and its model_type, and no two share one.
    #[test]
    fn families_are_found_by_their_names() {
        for f in FAMILIES {
            assert!(std::ptr::eq(
                Family::by_architecture(f.architecture).unwrap(),
                f
            ));
            assert!(std::ptr::eq(
                Family::by_model_type(f.model_type).unwrap(),
                f
            ));
        }
        assert!(Family::by_architecture("GemmaForCausalLM").is_none());
    }

    /// llama.cpp's tensor names map to HF's, and only to the weights the block has.
    #[test]
    fn gguf_names_map_to_hf_names() {
        let llama = Block::default();
        let hf = |n: &str, b: Block| Weight::from_gguf_name(n, b).map(|w| w.hf_name());
        for (gguf, want) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "blk.3.attn_k.weight",
                "model.layers.3.self_attn.k_proj.weight",
            ),
            (
                "blk.1.attn_output.weight",
                "model.layers.1.self_attn.o_proj.weight",
            ),
            (
                "blk.2.ffn_norm.weight",
                "model.layers.2.post_attention_layernorm.weight",
            ),
            (
                "blk.12.ffn_down.weight",
                "model.layers.12.mlp.down_proj.weight",
            ),
        ] {
            assert_eq!(hf(gguf, llama).as_deref(), Some(want), "{gguf}");
        }
        for none in [
            "rope_freqs.weight",
            "blk.0.attn_q.bias",
            "blk.0.attn_q_norm.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q",
        ] {
            assert_eq!(hf(none, llama), None, "{none}");
        }
        let qwen2 = Family::by_model_type("qwen2").unwrap().block;
        assert_eq!(
            hf("blk.0.attn_v.bias", qwen2).as_deref(),
            Some("model.layers.0.self_attn.v_proj.bias")
        );
        let qwen3 = Family::by_model_type("qwen3").unwrap().block;
        assert_eq!(
            hf("blk.4.attn_k_norm.weight", qwen3).as_deref(),
            Some("model.layers.4.self_attn.k_norm.weight")
        );
        // Every weight's GGUF name reads back as that weight.
        let all = Block {
            qkv_bias: true,
            sliding_window: false,
            qk_norm: true,
        };
        for p in LayerParam::of_block(all) {
            let w = Weight::Layer(7, p);
            assert_eq!(Weight::from_gguf_name(&w.gguf_name(), all), Some(w));
        }
    }
}
