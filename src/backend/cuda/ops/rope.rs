//! Rotate-half RoPE on the GPU (`kernels/rope.cu`): forward and backward (rotation by
//! `-angle`).

use crate::backend::cuda::device::{elem_cfg, int, u32s, CudaBackend, CudaTensor};
use crate::backend::cuda::registry::{self, KernelFn};
use crate::backend::shapes;
use anyhow::{Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaBackend {
    /// Rotate-half RoPE (`ROPE_ROTATE_HALF`) or its transpose (`ROPE_BWD`: rotation by
    /// -angle) in place on `x [n, heads * head_dim]`. Both take the f32 `inv_freq` the model
    /// computed on the host (`model::rope`, for every RoPE variant), so forward and backward
    /// see the same angles bit for bit, and the same as the CPU oracle.
    fn rope_launch(
        &self,
        kernel: KernelFn,
        x: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        let what = kernel.function;
        let op = if kernel == registry::ROPE_BWD {
            "rope_bwd"
        } else {
            "rope"
        };
        let (n, c) = shapes::rope(op, &x.shape, head_dim, positions, inv_freq)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let pos = self.htod(&u32s(positions, "rope position")?)?;
        let inv = self.htod(inv_freq)?;
        let (ni, ci, di) = (int(n, "rows")?, int(c, "cols")?, int(head_dim, "head_dim")?);
        let f = self.func(kernel)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.buf)
            .arg(&pos)
            .arg(&inv)
            .arg(&ni)
            .arg(&ci)
            .arg(&di);
        unsafe { b.launch(elem_cfg(n * c / 2)) }.context(what)?;
        Ok(())
    }
}

pub(crate) fn rope(
    cu: &CudaBackend,
    x: &mut CudaTensor,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<()> {
    cu.rope_launch(registry::ROPE_ROTATE_HALF, x, head_dim, positions, inv_freq)
}

pub(crate) fn rope_bwd(
    cu: &CudaBackend,
    dx: &mut CudaTensor,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<()> {
    cu.rope_launch(registry::ROPE_BWD, dx, head_dim, positions, inv_freq)
}
