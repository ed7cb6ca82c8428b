//! SwiGLU on the GPU (`kernels/swiglu.cu`): forward and backward.

use crate::backend::cuda::registry::{self};
use crate::backend::cuda::{elem_cfg, CudaBackend, CudaTensor};
use crate::backend::shapes;
use anyhow::{Context, Result};
use cudarc::driver::PushKernelArg;

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
