//! The embedding lookup on the GPU (`kernels/embed.cu`) and its
//! backward.

use crate::backend::cuda::registry::{self};
use crate::backend::cuda::{int, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::dims2;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::PushKernelArg;

impl CudaBackend {
    pub(crate) fn gather(&self, x: &CudaTensor, rows: &[u32], c: usize) -> Result<CudaTensor> {
        let mut out = self.tensor(vec![rows.len(), c])?;
        if rows.is_empty() || c == 0 {
            return Ok(out);
        }
        let idx = self.htod(rows)?;
        let (ni, ci) = (int(rows.len(), "rows")?, int(c, "cols")?);
        let f = self.func(registry::GATHER_ROWS)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.buf).arg(&idx).arg(&mut out.buf).arg(&ni).arg(&ci);
        unsafe { b.launch(rows_cfg(rows.len(), 128)) }.context("gather_rows")?;
        Ok(out)
    }
}

pub(crate) fn embed(cu: &CudaBackend, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
    let (v, d) = dims2(&table.shape)?;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= v) {
        bail!("token id {id} is outside the vocabulary of {v}");
    }
    cu.gather(table, ids, d)
}

pub(crate) fn embed_bwd(
    cu: &CudaBackend,
    dx: &CudaTensor,
    ids: &[u32],
    dtable: &mut CudaTensor,
) -> Result<()> {
    let (n, d) = dims2(&dx.shape)?;
    let (vocab, d2) = dims2(&dtable.shape)?;
    ensure!(
        n == ids.len() && d == d2,
        "embed_bwd: dx {:?} for {} ids, table {:?}",
        dx.shape,
        ids.len(),
        dtable.shape
    );
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("embed_bwd: id {id} outside the vocabulary of {vocab}");
    }
    if n == 0 || d == 0 {
        return Ok(());
    }
    // Rows grouped by id (CSR): one block per distinct id owns its table row.
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&r| (ids[r as usize], r));
    let mut uid: Vec<u32> = Vec::new();
    let mut start: Vec<u32> = Vec::new();
    for (e, &r) in order.iter().enumerate() {
        let id = ids[r as usize];
        if uid.last() != Some(&id) {
            uid.push(id);
            start.push(e as u32);
        }
    }
    start.push(n as u32);
    let nu = uid.len();
    let (uid_d, start_d, rows_d) = (cu.htod(&uid)?, cu.htod(&start)?, cu.htod(&order)?);
    let (nui, di) = (int(nu, "distinct ids")?, int(d, "cols")?);
    let f = cu.func(registry::EMBED_BWD)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&dx.buf)
        .arg(&uid_d)
        .arg(&start_d)
        .arg(&rows_d)
        .arg(&mut dtable.buf)
        .arg(&nui)
        .arg(&di);
    unsafe { b.launch(rows_cfg(nu, 128)) }.context("embed_bwd")?;
    Ok(())
}
