//! HF safetensors checkpoints: load (single file or sharded, mmap) and save (atomic).

use super::config::ModelConfig;
use super::family::{
    layer_tensor_name, Block, LayerParam, EMBED_NAME, FINAL_NORM_NAME, LM_HEAD_NAME,
};
use crate::util::{atomic_write, atomic_write_with, write_json};
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use crate::backend::HostTensor;

mod dtype;
mod headers;
mod save;
pub use dtype::StoreDtype;
use dtype::{fits_dtype, store_dtype_of};
pub use headers::{safetensors_files, safetensors_metadata, stored_dtypes};
pub use save::{save_model_dir, save_model_dir_as, save_safetensors, save_safetensors_with};

/// Convert one safetensors view to f32. `file` and `name` name the tensor in errors.
pub fn view_to_f32(view: &TensorView<'_>, file: &Path, name: &str) -> Result<Vec<f32>> {
    let bytes = view.data();
    let out = match view.dtype() {
        Dtype::F32 => bytes
            .par_chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .par_chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .par_chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!(
            "{}: tensor {name:?} has dtype {other:?}; pinpoint reads F32, F16 and BF16",
            file.display()
        ),
    };
    Ok(out)
}

/// All tensors of a checkpoint as f32, with the file each came from.
pub struct LoadedTensors {
    pub tensors: HashMap<String, HostTensor>,
    pub origin: HashMap<String, PathBuf>,
    /// The dtype most tensors were stored in (used when saving back).
    pub dtype: StoreDtype,
    /// Each tensor's stored dtype (a mixed model is saved back tensor by tensor).
    pub dtypes: HashMap<String, StoreDtype>,
    /// Content digest of the stored tensors ([`super::digest`]).
    pub digest: String,
}

impl LoadedTensors {
    /// Take a tensor, checking its shape. Errors name the file and tensor.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self
            .tensors
            .remove(name)
            .with_context(|| format!("checkpoint has no tensor {name:?}"))?;
        if t.shape != shape {
            let file = self
                .origin
                .get(name)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            bail!(
                "{file}: tensor {name:?} has shape {:?}, expected {shape:?} from config.json",
                t.shape
            );
        }
        Ok(t)
    }
}

/// Load every tensor of the files, converting to f32.
pub fn load_tensors(files: &[PathBuf]) -> Result<LoadedTensors> {
    let mut tensors = HashMap::new();
    let mut origin = HashMap::new();
    let mut dtype_count: BTreeMap<&'static str, (usize, StoreDtype)> = BTreeMap::new();
    let mut dtypes = HashMap::new();
    let mut sums = vec![];
    for file in files {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        // SAFETY: the file is opened read-only and not modified while mapped by us.
        let mmap = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("mapping {}", file.display()))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", file.display())
        })?;
        for (name, view) in st.tensors() {
            let data = view_to_f32(&view, file, &name)?;
            sums.push(super::digest::TensorSum::of(
                &name,
                &view.dtype().to_string(),
                view.shape(),
                view.data(),
            ));
            if let Some(d) = store_dtype_of(view.dtype()) {
                dtype_count.entry(d.torch_name()).or_insert((0, d)).0 += 1;
                dtypes.insert(name.clone(), d);
            }
            if tensors
                .insert(name.clone(), HostTensor::new(view.shape().to_vec(), data))
                .is_some()
            {
                bail!(
                    "{}: tensor {name:?} appears in more than one file",
                    file.display()
                );
            }
            origin.insert(name, file.clone());
        }
    }
    let dtype = dtype_count
        .values()
        .max_by_key(|(n, _)| *n)
        .map(|(_, d)| *d)
        .unwrap_or(StoreDtype::F32);
    Ok(LoadedTensors {
        tensors,
        origin,
        dtype,
        dtypes,
        digest: super::digest::combine(sums),
    })
}

/// Weights of one decoder layer. Linear weights are `[out, in]` as in HF.
#[derive(Debug, Clone)]
pub struct LayerWeights<T> {
    pub attn_norm: T, // [d_model]
    pub wq: T,        // [H*D, d_model]
    pub wk: T,        // [G*D, d_model]
    pub wv: T,        // [G*D, d_model]
    pub wo: T,        // [d_model, H*D]
    pub mlp_norm: T,  // [d_model]
    pub w_gate: T,    // [d_ff, d_model]
    pub w_up: T,      // [d_ff, d_model]
    pub w_down: T,    // [d_model, d_ff]
    /// q/k/v biases where the model has them (Qwen2), held as rows `[1, H*D]`, `[1, G*D]`,
    /// `[1, G*D]` (a checkpoint's `[out]`, same values): a head's part is a column region,
    /// trained when the mask asks for it.
    pub qkv_bias: Option<[T; 3]>,
    /// Per-head q and k RMSNorm weights `[D]` where the model has them (Qwen3).
    pub qk_norm: Option<[T; 2]>,
}

impl<T> LayerWeights<T> {
    /// The tensor of `p`, if this layer has it. With [`LayerWeights::get_mut`] and
    /// [`LayerWeights::try_build`], the one place a field is tied to its [`LayerParam`].
    pub fn get(&self, p: LayerParam) -> Option<&T> {
        Some(match p {
            LayerParam::AttnNorm => &self.attn_norm,
            LayerParam::Q => &self.wq,
            LayerParam::K => &self.wk,
            LayerParam::V => &self.wv,
            LayerParam::O => &self.wo,
            LayerParam::MlpNorm => &self.mlp_norm,
            LayerParam::Gate => &self.w_gate,
            LayerParam::Up => &self.w_up,
            LayerParam::Down => &self.w_down,
            LayerParam::QBias => &self.qkv_bias.as_ref()?[0],
            LayerParam::KBias => &self.qkv_bias.as_ref()?[1],
            LayerParam::VBias => &self.qkv_bias.as_ref()?[2],
            LayerParam::QNorm => &self.qk_norm.as_ref()?[0],
            LayerParam::KNorm => &self.qk_norm.as_ref()?[1],
        })
    }

    /// Mutable [`LayerWeights::get`].
    pub fn get_mut(&mut self, p: LayerParam) -> Option<&mut T> {
        Some(match p {
            LayerParam::AttnNorm => &mut self.attn_norm,
            LayerParam::Q => &mut self.wq,
            LayerParam::K => &mut self.wk,
            LayerParam::V => &mut self.wv,
            LayerParam::O => &mut self.wo,
            LayerParam::MlpNorm => &mut self.mlp_norm,
            LayerParam::Gate => &mut self.w_gate,
            LayerParam::Up => &mut self.w_up,
            LayerParam::Down => &mut self.w_down,
            LayerParam::QBias => &mut self.qkv_bias.as_mut()?[0],
            LayerParam::KBias => &mut self.qkv_bias.as_mut()?[1],
            LayerParam::VBias => &mut self.qkv_bias.as_mut()?[2],
            LayerParam::QNorm => &mut self.qk_norm.as_mut()?[0],
            LayerParam::KNorm => &mut self.qk_norm.as_mut()?[1],
        })
    }

    /// The weights this layer has, in checkpoint order.
    pub fn params(&self) -> Vec<LayerParam> {
        LayerParam::of_block(Block {
            qkv_bias: self.qkv_bias.is_some(),
            qk_norm: self.qk_norm.is_some(),
            ..Block::default()
        })
    }

    /// A layer with the weights `params` (every block has [`LayerParam::ALL`]; the
    /// optional parts come whole or not at all), each made by `f`.
    pub fn try_build(
        params: &[LayerParam],
        mut f: impl FnMut(LayerParam) -> Result<T>,
    ) -> Result<Self> {
        let has = |p: LayerParam| params.contains(&p);
        Ok(Self {
            attn_norm: f(LayerParam::AttnNorm)?,
            wq: f(LayerParam::Q)?,
            wk: f(LayerParam::K)?,
            wv: f(LayerParam::V)?,
            wo: f(LayerParam::O)?,
            mlp_norm: f(LayerParam::MlpNorm)?,
            w_gate: f(LayerParam::Gate)?,
            w_up: f(LayerParam::Up)?,
            w_down: f(LayerParam::Down)?,
            qkv_bias: match has(LayerParam::QBias) {
                true => Some([
                    f(LayerParam::QBias)?,
                    f(LayerParam::KBias)?,
                    f(LayerParam::VBias)?,
                ]),
                false => None,
            },
            qk_norm: match has(LayerParam::QNorm) {
                true => Some([f(LayerParam::QNorm)?, f(LayerParam::KNorm)?]),
                false => None,
            },
        })
    }
}

/// All weights of a model. `lm_head` is `None` when tied to `embed`.
#[derive(Debug, Clone)]
pub struct ModelWeights<T> {
    pub embed: T, // [vocab, d_model]
    pub layers: Vec<LayerWeights<T>>,
    pub final_norm: T,      // [d_model]
    pub lm_head: Option<T>, // [vocab, d_model]
}

impl<T> ModelWeights<T> {
    /// Apply `f(name, tensor)` to every tensor, producing weights of another type.
    pub fn try_map<U>(&self, mut f: impl FnMut(&str, &T) -> Result<U>) -> Result<ModelWeights<U>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            layers.push(LayerWeights::try_build(&l.params(), |p| {
                let t = l.get(p).expect("a param of this layer");
                f(&layer_tensor_name(i, p), t)
            })?);
        }
        Ok(ModelWeights {
            embed: f(EMBED_NAME, &self.embed)?,
            layers,
            final_norm: f(FINAL_NORM_NAME, &self.final_norm)?,
            lm_head: match &self.lm_head {
                Some(t) => Some(f(LM_HEAD_NAME, t)?),
                None => None,
            },
        })
    }

    /// Every tensor with its HF name, in a stable order.
    pub fn named(&self) -> Vec<(String, &T)> {
        let mut out = vec![(EMBED_NAME.to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            for p in l.params() {
                let t = l.get(p).expect("a param of this layer");
                out.push((layer_tensor_name(i, p), t));
            }
        }
        out.push((FINAL_NORM_NAME.to_string(), &self.final_norm));
        if let Some(h) = &self.lm_head {
            out.push((LM_HEAD_NAME.to_string(), h));
        }
        out
    }
}

/// Build [`ModelWeights`] from loaded tensors, checking every name and shape against `cfg`.
pub fn weights_from_tensors(
    cfg: &ModelConfig,
    mut t: LoadedTensors,
) -> Result<ModelWeights<HostTensor>> {
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    let dims = cfg.layer_dims();
    let params = cfg.layer_params();
    let embed = t.take(EMBED_NAME, &[v, d])?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        layers.push(LayerWeights::try_build(&params, |p| {
            // Biases are stored `[out]` and held as `[1, out]` rows.
            let mut w = t.take(&layer_tensor_name(i, p), &p.stored_shape(&dims))?;
            w.shape = p.shape(&dims);
            Ok(w)
        })?);
    }
    let final_norm = t.take(FINAL_NORM_NAME, &[d])?;
    let lm_head = if t.tensors.contains_key(LM_HEAD_NAME) {
        let h = t.take(LM_HEAD_NAME, &[v, d])?;
        if cfg.tie_word_embeddings {
            // transformers ties lm_head to the embedding and ignores a stored copy: one
            // that differs would make pinpoint compute another model than transformers.
            headers::tied_copy_matches(&h, &embed, t.origin.get(LM_HEAD_NAME))?;
            None
        } else {
            Some(h)
        }
    } else if cfg.tie_word_embeddings {
        None
    } else {
        bail!("checkpoint has no tensor \"{LM_HEAD_NAME}\" and config.json does not tie word embeddings");
    };
    // Rotary caches some exporters keep are harmless; anything else is unexpected.
    t.tensors.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
    if let Some(extra) = t.tensors.keys().next() {
        let file = t
            .origin
            .get(extra)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        bail!(
            "{file}: unexpected tensor {extra:?} for a {} model",
            cfg.architecture
        );
    }
    Ok(ModelWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// Load `config.json` and the weights of a HF model directory as f32.
pub fn load_model_dir(dir: &Path) -> Result<(ModelConfig, ModelWeights<HostTensor>, StoreDtype)> {
    if !dir.is_dir() {
        if dir.exists() {
            bail!("model directory {} is a file, not a folder", dir.display());
        }
        bail!("model directory {} does not exist", dir.display());
    }
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = safetensors_files(dir)?;
    let loaded = load_tensors(&files)?;
    super::digest::remember(dir, &loaded.digest);
    crate::model::shard_index::check(dir, &loaded.origin)?;
    let dtype = loaded.dtype;
    let w = weights_from_tensors(&cfg, loaded)
        .with_context(|| format!("loading weights of {}", dir.display()))?;
    weights_finite(&w).with_context(|| format!("{}: corrupt weights", dir.display()))?;
    Ok((cfg, w, dtype))
}

/// Every tensor of `w` finite; the error names the tensor.
pub fn weights_finite(w: &ModelWeights<HostTensor>) -> Result<()> {
    for (name, t) in w.named() {
        crate::guard::finite(&format!("tensor {name}"), &t.data)?;
    }
    Ok(())
}
