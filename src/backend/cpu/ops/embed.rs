//! The embedding lookup on the CPU and its backward (`dtable[ids[i]] += dx[i]`).

use crate::backend::dims2;
use crate::backend::HostTensor;
use anyhow::{ensure, Result};

pub(crate) fn embed(table: &HostTensor, ids: &[u32]) -> Result<HostTensor> {
    let (v, d) = dims2(&table.shape)?;
    let mut out = vec![0.0; ids.len() * d];
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        ensure!(
            (id as usize) < v,
            "token id {id} is outside the vocabulary of {v}"
        );
        row.copy_from_slice(&table.data[id as usize * d..(id as usize + 1) * d]);
    }
    Ok(HostTensor::new(vec![ids.len(), d], out))
}

pub(crate) fn embed_bwd(dx: &HostTensor, ids: &[u32], dtable: &mut HostTensor) -> Result<()> {
    let (n, d) = dims2(&dx.shape)?;
    let (vocab, d2) = dims2(&dtable.shape)?;
    ensure!(
        n == ids.len() && d == d2,
        "embed_bwd: {n} rows for {} ids",
        ids.len()
    );
    for (row, &id) in dx.data.chunks_exact(d).zip(ids) {
        ensure!((id as usize) < vocab, "embed_bwd: id {id} outside {vocab}");
        for (a, b) in dtable.data[id as usize * d..][..d].iter_mut().zip(row) {
            *a += b;
        }
    }
    Ok(())
}
