//! LoRA baseline: `y = x W^T + (alpha / r) (x A^T) B^T` on chosen projections, `A [r, in]`
//! initialised as PEFT (uniform in `±1/sqrt(in)`, kaiming-uniform with a = sqrt(5)), `B [out, r]`
//! zero, so training starts at the base model. Merged into the weights on save.

use crate::backend::host;
use crate::backend::TrainBackend;
use crate::model::{HostTensor, ModelWeights};
use crate::train::Adapter;
use crate::transformer::Model;
use crate::tune::mask::{param, param_mut, LayerParam, ParamId};
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// Projections that get an adapter (q, k, v, o, gate, up, down).
    pub projs: Vec<LayerParam>,
    /// Layers (None: all).
    pub layers: Option<Vec<usize>>,
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            projs: vec![LayerParam::Q, LayerParam::K, LayerParam::V, LayerParam::O],
            layers: None,
            seed: 0,
        }
    }
}

/// Fresh adapters for `cfg` on `m`.
pub fn init<B: TrainBackend>(m: &Model<B>, cfg: &LoraConfig) -> Result<Vec<Adapter<B::Tensor>>> {
    ensure!(cfg.rank > 0, "LoRA rank must be positive");
    ensure!(!cfg.projs.is_empty(), "LoRA needs at least one projection");
    for p in &cfg.projs {
        ensure!(
            !matches!(p, LayerParam::AttnNorm | LayerParam::MlpNorm),
            "LoRA applies to projections, not {p:?}"
        );
    }
    let nl = m.cfg.num_hidden_layers;
    let all: Vec<usize> = (0..nl).collect();
    let layers = cfg.layers.as_deref().unwrap_or(&all);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let scale = cfg.alpha / cfg.rank as f32;
    let mut out = vec![];
    for &l in layers {
        ensure!(l < nl, "LoRA layer {l} out of {nl}");
        for &p in &cfg.projs {
            let shape = ParamId::Layer(l, p).shape(&m.cfg);
            let (o, i) = (shape[0], shape[1]);
            let bound = 1.0 / (i as f32).sqrt();
            let a = HostTensor::new(
                vec![cfg.rank, i],
                (0..cfg.rank * i)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect(),
            );
            let b = HostTensor::zeros(vec![o, cfg.rank]);
            out.push(Adapter {
                layer: l,
                proj: p,
                a: m.backend.upload(&a)?,
                b: m.backend.upload(&b)?,
                scale,
            });
        }
    }
    Ok(out)
}

/// `scale * B @ A` `[out, in]`.
pub fn delta(a: &HostTensor, b: &HostTensor, scale: f32) -> HostTensor {
    let (r, i) = (a.shape[0], a.shape[1]);
    let o = b.shape[0];
    // B [o, r] @ A [r, i] = B @ (A^T)^T: host::matmul_t wants the right factor as [i, r].
    let mut at = vec![0.0f32; i * r];
    for rr in 0..r {
        for c in 0..i {
            at[c * r + rr] = a.data[rr * i + c];
        }
    }
    let mut d = host::matmul_t(&b.data, &at, o, r, i);
    d.iter_mut().for_each(|x| *x *= scale);
    HostTensor::new(vec![o, i], d)
}

/// Host weights with every adapter merged: `W += scale * B A`.
pub fn merged<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
) -> Result<ModelWeights<HostTensor>> {
    let mut w = m.host_weights()?;
    for ad in adapters {
        let a = m.backend.download(&ad.a)?;
        let b = m.backend.download(&ad.b)?;
        let d = delta(&a, &b, ad.scale);
        let t = param_mut(&mut w, ParamId::Layer(ad.layer, ad.proj))?;
        ensure!(
            t.shape == d.shape,
            "LoRA delta {:?} for weight {:?}",
            d.shape,
            t.shape
        );
        t.data.iter_mut().zip(&d.data).for_each(|(x, y)| *x += y);
    }
    Ok(w)
}

/// Merge the adapters into the model's weights in place (the adapters are consumed).
pub fn merge_into<B: TrainBackend>(
    m: &mut Model<B>,
    adapters: Vec<Adapter<B::Tensor>>,
) -> Result<()> {
    for ad in adapters {
        let p = ParamId::Layer(ad.layer, ad.proj);
        let mut w = m.backend.download(param(&m.weights, p)?)?;
        let d = delta(
            &m.backend.download(&ad.a)?,
            &m.backend.download(&ad.b)?,
            ad.scale,
        );
        w.data.iter_mut().zip(&d.data).for_each(|(x, y)| *x += y);
        *param_mut(&mut m.weights, p)? = m.backend.upload(&w)?;
    }
    Ok(())
}
