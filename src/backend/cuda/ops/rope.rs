//! Rotate-half RoPE on the GPU (`kernels/rope.cu`): forward and backward (rotation by
//! `-angle`).

use crate::backend::cuda::registry::KernelFn;
use crate::backend::cuda::{elem_cfg, int, u32s, CudaBackend, CudaTensor};
use crate::backend::dims2;
use anyhow::{ensure, Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaBackend {
    /// Rotate-half RoPE (`ROPE_ROTATE_HALF`) or its transpose (`ROPE_BWD`: rotation by
    /// -angle) in place on `x [n, heads * head_dim]`. Both take the f32 `inv_freq` the model
    /// computed on the host (`model::rope`, for every RoPE variant), so forward and backward
    /// see the same angles bit for bit, and the same as the CPU oracle.
    pub(crate) fn rope_launch(
        &self,
        kernel: KernelFn,
        x: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        let what = kernel.function;
        let (n, c) = dims2(&x.shape)?;
        ensure!(
            positions.len() == n
                && head_dim > 0
                && head_dim.is_multiple_of(2)
                && c % head_dim == 0
                && inv_freq.len() * 2 == head_dim,
            "{what}: {n} rows of width {c}, {} positions, head_dim {head_dim}, {} inverse frequencies",
            positions.len(),
            inv_freq.len()
        );
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
