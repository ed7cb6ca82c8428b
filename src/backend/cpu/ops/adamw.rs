//! The optimizer on the CPU: AdamW state on the host, the global-norm sum of squares.

use crate::backend::{shapes, AdamStep, HostTensor, ParamState, Region};
use anyhow::Result;

/// The update on host buffers (the reference every backend matches):
/// `g' = g * clip; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
/// master = master * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps)`.
pub fn apply(a: &AdamStep, s: &mut ParamState, g: &[f32]) {
    let it = s.master.iter_mut().zip(s.m.iter_mut()).zip(s.v.iter_mut());
    for (((w, m), v), &g) in it.zip(g) {
        let gi = g * a.clip;
        *m = a.beta1 * *m + (1.0 - a.beta1) * gi;
        *v = a.beta2 * *v + (1.0 - a.beta2) * gi * gi;
        let denom = v.sqrt() / a.bc2_sqrt + a.eps;
        *w = *w * a.decay - a.step_size * *m / denom;
    }
}

pub(crate) fn opt_write(s: &mut ParamState, host: &ParamState) -> Result<()> {
    shapes::opt_write(s.master.len(), host)?;
    *s = host.clone();
    Ok(())
}

pub(crate) fn sum_squares(g: &HostTensor) -> Result<f64> {
    Ok(g.data.iter().map(|&x| x as f64 * x as f64).sum())
}

pub(crate) fn adamw_update(
    s: &mut ParamState,
    g: &HostTensor,
    w: &mut HostTensor,
    reg: Region,
    a: &AdamStep,
) -> Result<()> {
    shapes::adamw(g.numel(), s.master.len(), reg, &w.shape)?;
    apply(a, s, &g.data);
    let shape = reg.shape(&w.shape);
    super::rows::write_region(w, reg, &HostTensor::new(shape, s.master.clone()))
}
