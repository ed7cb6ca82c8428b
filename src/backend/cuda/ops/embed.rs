//! The embedding lookup on the GPU (a row gather, `ops/rows.rs`) and its backward
//! (`kernels/embed.cu`).

use crate::backend::cuda::device::{int, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::cuda::registry;
use crate::backend::shapes;
use anyhow::{Context, Result};
use cudarc::driver::PushKernelArg;

pub(crate) fn embed(cu: &CudaBackend, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
    let (_, d) = shapes::embed(&table.shape, ids)?;
    cu.gather(table, ids, d)
}

pub(crate) fn embed_bwd(
    cu: &CudaBackend,
    dx: &CudaTensor,
    ids: &[u32],
    dtable: &mut CudaTensor,
) -> Result<()> {
    let (n, d) = shapes::embed_bwd(&dx.shape, ids, &dtable.shape)?;
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
