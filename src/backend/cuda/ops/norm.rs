//! RMSNorm on the GPU (`kernels/norm.cu`): the forward, the
//! residual add fused with the next norm, the backward, and `norm_dot` (norm then label rows
//! of lm_head, in f32).

use crate::backend::cuda::device::{int, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::shapes;
use crate::backend::HostTensor;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Block of `rmsnorm_bwd_dw`: `(NB_COLS, NB_ROWS)`.
const NB_COLS: usize = 32;

const NB_ROWS: u32 = 8;

impl CudaBackend {
    /// `x += y; out = rmsnorm(x) * w` in one pass (the residual add fused with the next
    /// norm). Same result as `add_assign` then `rmsnorm`.
    pub fn add_rmsnorm(
        &self,
        x: &mut CudaTensor,
        y: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor> {
        shapes::same_shape("add_rmsnorm", &x.shape, &y.shape)?;
        let (n, d) = shapes::rmsnorm(&x.shape, w.numel())?;
        let mut out = self.tensor(vec![n, d])?;
        if n == 0 {
            return Ok(out);
        }
        let (ni, di) = (int(n, "rows")?, int(d, "cols")?);
        let f = self.func(registry::ADD_RMSNORM)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.buf)
            .arg(&y.buf)
            .arg(&w.buf)
            .arg(&mut out.buf)
            .arg(&ni)
            .arg(&di)
            .arg(&eps);
        unsafe { b.launch(rows_cfg(n, 256)) }.context("add_rmsnorm")?;
        Ok(out)
    }
}

pub(crate) fn rmsnorm(
    cu: &CudaBackend,
    x: &CudaTensor,
    w: &CudaTensor,
    eps: f32,
) -> Result<CudaTensor> {
    let (n, d) = shapes::rmsnorm(&x.shape, w.numel())?;
    let mut out = cu.tensor(vec![n, d])?;
    if n == 0 {
        return Ok(out);
    }
    let (ni, di) = (int(n, "rows")?, int(d, "cols")?);
    let null = 0u64; // no residual: the kernel reads and writes only x's values
    let f = cu.func(registry::ADD_RMSNORM)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&x.buf)
        .arg(&null)
        .arg(&w.buf)
        .arg(&mut out.buf)
        .arg(&ni)
        .arg(&di)
        .arg(&eps);
    unsafe { b.launch(rows_cfg(n, 256)) }.context("rmsnorm")?;
    Ok(out)
}

pub(crate) fn norm_dot(
    cu: &CudaBackend,
    x: &CudaTensor,
    norm: &CudaTensor,
    eps: f32,
    w: &CudaTensor,
) -> Result<HostTensor> {
    let (n, d, m) = shapes::norm_dot(&x.shape, norm.numel(), &w.shape)?;
    if n == 0 || m == 0 {
        return Ok(HostTensor::new(vec![n, m], vec![]));
    }
    let mut out = cu.alloc::<f32>(n * m)?;
    let (ni, di, mi) = (int(n, "rows")?, int(d, "cols")?, int(m, "outputs")?);
    let f = cu.func(registry::NORM_DOT)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&x.buf)
        .arg(&norm.buf)
        .arg(&w.buf)
        .arg(&mut out)
        .arg(&ni)
        .arg(&di)
        .arg(&mi)
        .arg(&eps);
    unsafe { b.launch(rows_cfg(n, 256)) }.context("norm_dot")?;
    let mut v = cu
        .stream
        .clone_dtoh(&out)
        .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
    v.truncate(n * m);
    Ok(HostTensor::new(vec![n, m], v))
}

pub(crate) fn rmsnorm_bwd(
    cu: &CudaBackend,
    dy: &CudaTensor,
    x: &CudaTensor,
    w: &CudaTensor,
    eps: f32,
    dw: Option<&mut CudaTensor>,
) -> Result<CudaTensor> {
    let (n, d) = shapes::rmsnorm_bwd(
        &dy.shape,
        &x.shape,
        w.numel(),
        dw.as_ref().map(|t| t.numel()),
    )?;
    let mut dx = cu.tensor(vec![n, d])?;
    if n == 0 || d == 0 {
        return Ok(dx);
    }
    let (ni, di) = (int(n, "rows")?, int(d, "cols")?);
    // r of every row, for the weight gradient.
    let mut rs = match dw {
        Some(_) => Some(cu.alloc::<f32>(n)?),
        None => None,
    };
    let f = cu.func(registry::RMSNORM_BWD_DX)?;
    let mut b = cu.stream.launch_builder(&f);
    let null = 0u64;
    b.arg(&dy.buf).arg(&x.buf).arg(&w.buf).arg(&mut dx.buf);
    match rs.as_mut() {
        Some(r) => b.arg(r),
        None => b.arg(&null),
    };
    b.arg(&ni).arg(&di).arg(&eps);
    unsafe { b.launch(rows_cfg(n, 256)) }.context("rmsnorm_bwd_dx")?;
    if let (Some(dw), Some(rs)) = (dw, rs.as_ref()) {
        let f = cu.func(registry::RMSNORM_BWD_DW)?;
        let mut b = cu.stream.launch_builder(&f);
        b.arg(&dy.buf)
            .arg(&x.buf)
            .arg(rs)
            .arg(&mut dw.buf)
            .arg(&ni)
            .arg(&di);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(NB_COLS) as u32, 1, 1),
            block_dim: (NB_COLS as u32, NB_ROWS, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.context("rmsnorm_bwd_dw")?;
    }
    Ok(dx)
}
