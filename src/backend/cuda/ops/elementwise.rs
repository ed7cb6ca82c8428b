//! Elementwise ops on the GPU (`kernels/elementwise.cu`): the residual add and the scale.

use crate::backend::cuda::device::{elem_cfg, int, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::shapes;
use anyhow::{Context, Result};
use cudarc::driver::PushKernelArg;

/// `x += y`, same shape.
pub(crate) fn add_assign(cu: &CudaBackend, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
    shapes::same_shape("add", &x.shape, &y.shape)?;
    let len = x.numel();
    if len == 0 {
        return Ok(());
    }
    let li = int(len, "elements")?;
    let f = cu.func(registry::ADD_INPLACE)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&mut x.buf).arg(&y.buf).arg(&li);
    unsafe { b.launch(elem_cfg(len)) }.context("add_inplace")?;
    Ok(())
}

/// `x *= s`.
pub(crate) fn scale(cu: &CudaBackend, x: &mut CudaTensor, s: f32) -> Result<()> {
    let len = x.numel();
    if len == 0 {
        return Ok(());
    }
    let li = len as i64;
    let f = cu.func(registry::SCALE_BF16)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&mut x.buf).arg(&s).arg(&li);
    unsafe { b.launch(elem_cfg(len)) }.context("scale_bf16")?;
    Ok(())
}
