//! Row and region moves on the CPU: gather, scatter and slices of rows (the taps of
//! heads), regions of weights (the tuned slices).

use crate::backend::{shapes, HostTensor, Region};
use anyhow::Result;

pub(crate) fn gather_rows(x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
    let (_, c) = shapes::gather_rows(&x.shape, rows)?;
    let mut out = Vec::with_capacity(rows.len() * c);
    for &r in rows {
        out.extend_from_slice(&x.data[r * c..(r + 1) * c]);
    }
    Ok(HostTensor::new(vec![rows.len(), c], out))
}

/// Every row is checked before any of `dst` changes.
pub(crate) fn scatter_rows(dst: &mut HostTensor, rows: &[usize], src: &HostTensor) -> Result<()> {
    let (_, c) = shapes::scatter_rows(&dst.shape, rows, &src.shape)?;
    for (i, &r) in rows.iter().enumerate() {
        dst.data[r * c..(r + 1) * c].copy_from_slice(&src.data[i * c..(i + 1) * c]);
    }
    Ok(())
}

pub(crate) fn write_slices(
    x: &mut HostTensor,
    rows: &[usize],
    col0: &[usize],
    values: &HostTensor,
) -> Result<()> {
    let (c, vn, width) = shapes::write_slices(&x.shape, &values.shape, rows, col0)?;
    for i in 0..vn {
        x.data[rows[i] * c + col0[i]..][..width]
            .copy_from_slice(&values.data[i * width..(i + 1) * width]);
    }
    Ok(())
}

pub(crate) fn read_region(t: &HostTensor, reg: Region) -> Result<HostTensor> {
    reg.check(&t.shape)?;
    Ok(match reg {
        Region::Full => t.clone(),
        Region::Rows { start, len } => {
            let c = t.shape[1];
            HostTensor::new(vec![len, c], t.data[start * c..(start + len) * c].to_vec())
        }
        Region::Cols { start, len } => {
            let (r, c) = (t.shape[0], t.shape[1]);
            let mut out = Vec::with_capacity(r * len);
            for i in 0..r {
                out.extend_from_slice(&t.data[i * c + start..i * c + start + len]);
            }
            HostTensor::new(vec![r, len], out)
        }
    })
}

pub(crate) fn write_region(t: &mut HostTensor, reg: Region, src: &HostTensor) -> Result<()> {
    shapes::write_region(&t.shape, reg, src.numel())?;
    match reg {
        Region::Full => t.data.copy_from_slice(&src.data),
        Region::Rows { start, len } => {
            let c = t.shape[1];
            t.data[start * c..(start + len) * c].copy_from_slice(&src.data);
        }
        Region::Cols { start, len } => {
            let c = t.shape[1];
            for (i, row) in src.data.chunks_exact(len).enumerate() {
                t.data[i * c + start..i * c + start + len].copy_from_slice(row);
            }
        }
    }
    Ok(())
}
