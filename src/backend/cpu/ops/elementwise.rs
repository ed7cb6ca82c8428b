//! Elementwise ops on the CPU: the residual add and the scale.

use crate::backend::cpu::buf::ELEMS_PER_TASK;
use crate::backend::{shapes, HostTensor};
use anyhow::Result;
use rayon::prelude::*;

/// `x += y`, same shape.
pub(crate) fn add_assign(x: &mut HostTensor, y: &HostTensor) -> Result<()> {
    shapes::same_shape("add", &x.shape, &y.shape)?;
    x.data
        .par_iter_mut()
        .with_min_len(ELEMS_PER_TASK)
        .zip(&y.data)
        .for_each(|(a, b)| *a += b);
    Ok(())
}

/// `x *= s`.
pub(crate) fn scale(x: &mut HostTensor, s: f32) -> Result<()> {
    x.data.par_iter_mut().for_each(|v| *v *= s);
    Ok(())
}
