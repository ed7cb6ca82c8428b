//! Fused softmax cross-entropy on the GPU (`kernels/xent.cu`).

use crate::backend::cuda::device::{int, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::shapes;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::PushKernelArg;

/// Threads per block of `xent_fwd_bwd` (`XE_THREADS`).
const XE_THREADS: u32 = 256;

pub(crate) fn xent_fwd_bwd(
    cu: &CudaBackend,
    logits: &CudaTensor,
    targets: &[Option<u32>],
    scale: f32,
) -> Result<(f64, CudaTensor)> {
    let (n, vocab) = shapes::xent(&logits.shape, targets)?;
    let mut dl = cu.tensor(vec![n, vocab])?;
    if n == 0 {
        return Ok((0.0, dl));
    }
    let (ni, vi) = (int(n, "rows")?, int(vocab, "vocab")?);
    let tg: Vec<i32> = targets.iter().map(|t| t.map_or(-1, |t| t as i32)).collect();
    let tg_d = cu.htod(&tg)?;
    let mut loss = cu.alloc::<f32>(n)?;
    let f = cu.func(registry::XENT_FWD_BWD)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&logits.buf)
        .arg(&tg_d)
        .arg(&mut dl.buf)
        .arg(&mut loss)
        .arg(&ni)
        .arg(&vi)
        .arg(&scale);
    unsafe { b.launch(rows_cfg(n, XE_THREADS)) }.context("xent_fwd_bwd")?;
    let per_row = cu
        .stream
        .clone_dtoh(&loss)
        .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
    // f32 per row, summed in f64 in row order, as the oracle.
    let total = per_row[..n].iter().map(|&l| l as f64).sum();
    Ok((total, dl))
}
