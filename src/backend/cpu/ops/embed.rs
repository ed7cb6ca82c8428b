//! The embedding lookup on the CPU and its backward (`dtable[ids[i]] += dx[i]`).

use crate::backend::{shapes, HostTensor};
use anyhow::Result;

pub(crate) fn embed(table: &HostTensor, ids: &[u32]) -> Result<HostTensor> {
    let (_, d) = shapes::embed(&table.shape, ids)?;
    let mut out = vec![0.0; ids.len() * d];
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        row.copy_from_slice(&table.data[id as usize * d..(id as usize + 1) * d]);
    }
    Ok(HostTensor::new(vec![ids.len(), d], out))
}

/// Every id is checked before any row of `dtable` changes.
pub(crate) fn embed_bwd(dx: &HostTensor, ids: &[u32], dtable: &mut HostTensor) -> Result<()> {
    let (_, d) = shapes::embed_bwd(&dx.shape, ids, &dtable.shape)?;
    for (row, &id) in dx.data.chunks_exact(d).zip(ids) {
        for (a, b) in dtable.data[id as usize * d..][..d].iter_mut().zip(row) {
            *a += b;
        }
    }
    Ok(())
}
