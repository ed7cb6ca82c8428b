//! Sampling on the GPU (`kernels/sample.cu`): the greedy pick of each row of logits.

use crate::backend::cuda::device::{int, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::dims2;
use anyhow::{anyhow, Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaBackend {
    /// Index of the largest value of each row of `logits [n, vocab]` (lowest on ties).
    pub fn argmax_rows(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        let (n, v) = dims2(&logits.shape)?;
        if n == 0 {
            return Ok(vec![]);
        }
        let mut out = self.alloc::<u32>(n)?;
        let (ni, vi) = (int(n, "rows")?, int(v, "vocab")?);
        let f = self.func(registry::ARGMAX_ROWS)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.buf).arg(&mut out).arg(&ni).arg(&vi);
        unsafe { b.launch(rows_cfg(n, 256)) }.context("argmax_rows")?;
        let mut ids = self
            .stream
            .clone_dtoh(&out)
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        ids.truncate(n);
        Ok(ids)
    }
}
