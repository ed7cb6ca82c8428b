//! What a training step updates besides the model's own weights, and where its gradients
//! go: low-rank adapters, and the gradient buffers of the mask's slices and the adapters.

use crate::backend::TrainBackend;
use crate::model::mask::{param, LayerParam, Mask};
use crate::transformer::Model;
use anyhow::Result;

/// A low-rank adapter on one projection: `y = x W^T + scale * (x A^T) B^T`,
/// `a [r, in]`, `b [out, r]`.
pub struct Adapter<T> {
    pub layer: usize,
    pub proj: LayerParam,
    pub a: T,
    pub b: T,
    pub scale: f32,
}

/// Gradient buffers: one per mask slice (shape of the slice's region), and `(dA, dB)` per
/// adapter. Backward accumulates into them (param grads +=).
pub struct Grads<T> {
    pub slices: Vec<T>,
    pub adapters: Vec<(T, T)>,
}

impl<T> Grads<T> {
    /// Zeroed buffers for `mask` and `adapters`.
    pub fn zeros<B: TrainBackend<Tensor = T>>(
        model: &Model<B>,
        mask: &Mask,
        adapters: &[Adapter<T>],
    ) -> Result<Self> {
        let b = &model.backend;
        let mut slices = Vec::with_capacity(mask.slices.len());
        for s in &mask.slices {
            let shape = b.shape(param(&model.weights, s.param)?).to_vec();
            slices.push(b.zeros(&s.region.shape(&shape))?);
        }
        let mut ads = Vec::with_capacity(adapters.len());
        for a in adapters {
            ads.push((b.zeros(b.shape(&a.a))?, b.zeros(b.shape(&a.b))?));
        }
        Ok(Self {
            slices,
            adapters: ads,
        })
    }
}
