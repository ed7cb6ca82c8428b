//! SwiGLU on the GPU (`kernels/swiglu.cu`): forward and backward.

use crate::backend::cuda::device::{elem_cfg, int, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::shapes;
use anyhow::{Context, Result};
use cudarc::driver::PushKernelArg;

/// `silu(gate) * up`, same shape.
pub(crate) fn swiglu(cu: &CudaBackend, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
    shapes::same_shape("swiglu", &gate.shape, &up.shape)?;
    let len = gate.numel();
    let mut out = cu.tensor(gate.shape.clone())?;
    if len == 0 {
        return Ok(out);
    }
    let li = int(len, "elements")?;
    let f = cu.func(registry::SWIGLU)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&gate.buf).arg(&up.buf).arg(&mut out.buf).arg(&li);
    unsafe { b.launch(elem_cfg(len)) }.context("swiglu")?;
    Ok(out)
}

pub(crate) fn swiglu_bwd(
    cu: &CudaBackend,
    dact: &CudaTensor,
    gate: &CudaTensor,
    up: &CudaTensor,
) -> Result<(CudaTensor, CudaTensor)> {
    shapes::swiglu_bwd(&dact.shape, &gate.shape, &up.shape)?;
    let len = gate.numel();
    let mut dg = cu.tensor(gate.shape.clone())?;
    let mut du = cu.tensor(gate.shape.clone())?;
    if len == 0 {
        return Ok((dg, du));
    }
    let li = len as i64;
    let f = cu.func(registry::SWIGLU_BWD)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&dact.buf)
        .arg(&gate.buf)
        .arg(&up.buf)
        .arg(&mut dg.buf)
        .arg(&mut du.buf)
        .arg(&li);
    unsafe { b.launch(elem_cfg(len)) }.context("swiglu_bwd")?;
    Ok((dg, du))
}
