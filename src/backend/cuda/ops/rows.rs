//! Row and region moves on the GPU (`kernels/rows.cu`): gather, scatter and slices of rows
//! (the taps of heads), regions of weights (the tuned slices).

use crate::backend::cuda::device::{
    bf16_bits, bf16_value, elem_cfg, int, rows_cfg, u32s, CudaBackend, CudaTensor,
};
use crate::backend::cuda::registry;
use crate::backend::{dims2, shapes, Backend, HostTensor, Region};
use anyhow::{anyhow, Context, Result};
use cudarc::driver::PushKernelArg;

/// Where a region lies in a `[r, c]` matrix (1-D `[c]` counts as `[1, c]`): `rows x cols`
/// elements starting at `(row0, col0)`, the matrix's row stride `ld`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegionGeom {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub row0: usize,
    pub col0: usize,
}

pub(crate) fn region_geom(reg: Region, shape: &[usize]) -> Result<RegionGeom> {
    reg.check(shape)?;
    let (r, c) = dims2(shape)?;
    Ok(match reg {
        Region::Full => RegionGeom {
            rows: r,
            cols: c,
            ld: c,
            row0: 0,
            col0: 0,
        },
        Region::Rows { start, len } => RegionGeom {
            rows: len,
            cols: c,
            ld: c,
            row0: start,
            col0: 0,
        },
        Region::Cols { start, len } => RegionGeom {
            rows: r,
            cols: len,
            ld: c,
            row0: 0,
            col0: start,
        },
    })
}

impl CudaBackend {
    /// Rows `rows` (checked by the caller) of `x`, of `c` columns: `[rows.len(), c]`.
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

    fn dtoh_bf16(
        &self,
        view: cudarc::driver::CudaView<'_, u16>,
        shape: Vec<usize>,
    ) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(HostTensor::new(shape, vec![]));
        }
        let bits = self
            .stream
            .clone_dtoh(&view)
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        Ok(HostTensor::new(
            shape,
            bits[..n].iter().map(|&b| bf16_value(b)).collect(),
        ))
    }

    /// Copy a `rows x cols` block: `dst[r * dst_ld + c] = src[r * src_ld + c]` (element 0 of
    /// each view is element (0, 0) of its block).
    fn copy2d(
        &self,
        src: &cudarc::driver::CudaView<'_, u16>,
        src_ld: usize,
        dst: &mut cudarc::driver::CudaViewMut<'_, u16>,
        dst_ld: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (sl, dl, ri, ci) = (
            int(src_ld, "source stride")?,
            int(dst_ld, "destination stride")?,
            int(rows, "rows")?,
            int(cols, "cols")?,
        );
        let f = self.func(registry::COPY2D_BF16)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(src).arg(&sl).arg(dst).arg(&dl).arg(&ri).arg(&ci);
        unsafe { b.launch(elem_cfg(rows * cols)) }.context("copy2d_bf16")?;
        Ok(())
    }
}

pub(crate) fn gather_rows(cu: &CudaBackend, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
    let (_, c) = shapes::gather_rows(&x.shape, rows)?;
    cu.gather(x, &u32s(rows, "row")?, c)
}

pub(crate) fn scatter_rows(
    cu: &CudaBackend,
    dst: &mut CudaTensor,
    rows: &[usize],
    src: &CudaTensor,
) -> Result<()> {
    let (_, c) = shapes::scatter_rows(&dst.shape, rows, &src.shape)?;
    if rows.is_empty() || c == 0 {
        return Ok(());
    }
    let idx = cu.htod(&u32s(rows, "row")?)?;
    let (ni, ci) = (int(rows.len(), "rows")?, int(c, "cols")?);
    let f = cu.func(registry::SCATTER_ROWS)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&mut dst.buf)
        .arg(&idx)
        .arg(&src.buf)
        .arg(&ni)
        .arg(&ci);
    unsafe { b.launch(rows_cfg(rows.len(), 128)) }.context("scatter_rows")?;
    Ok(())
}

pub(crate) fn write_slices(
    cu: &CudaBackend,
    x: &mut CudaTensor,
    rows: &[usize],
    col0: &[usize],
    values: &HostTensor,
) -> Result<()> {
    let (c, vn, width) = shapes::write_slices(&x.shape, &values.shape, rows, col0)?;
    if vn == 0 || width == 0 {
        return Ok(());
    }
    // Mean-ablation repeats one slice for every row: send it once, read it with stride 0.
    let first = &values.data[..width];
    let same = values.data.chunks_exact(width).all(|r| r == first);
    let (vals, stride) = if same {
        (first, 0)
    } else {
        (&values.data[..], width)
    };
    let bits: Vec<u16> = vals.iter().map(|&v| bf16_bits(v)).collect();
    let vals_dev = cu.htod(&bits)?;
    let rows_dev = cu.htod(&u32s(rows, "row")?)?;
    let cols_dev = cu.htod(&u32s(col0, "col")?)?;
    let (ci, ni, wi, si) = (
        int(c, "cols")?,
        int(vn, "slices")?,
        int(width, "width")?,
        int(stride, "stride")?,
    );
    let f = cu.func(registry::WRITE_SLICES)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&mut x.buf)
        .arg(&ci)
        .arg(&rows_dev)
        .arg(&cols_dev)
        .arg(&vals_dev)
        .arg(&ni)
        .arg(&wi)
        .arg(&si);
    unsafe { b.launch(rows_cfg(vn, 128)) }.context("write_slices")?;
    Ok(())
}

pub(crate) fn read_region(cu: &CudaBackend, t: &CudaTensor, reg: Region) -> Result<HostTensor> {
    let g = region_geom(reg, &t.shape)?;
    let shape = reg.shape(&t.shape);
    if g.rows * g.cols == 0 {
        return Ok(HostTensor::new(shape, vec![]));
    }
    match reg {
        Region::Full => cu.download(t),
        Region::Rows { .. } => {
            let view = t.buf.slice(g.row0 * g.ld..(g.row0 + g.rows) * g.ld);
            cu.dtoh_bf16(view, shape)
        }
        Region::Cols { .. } => {
            let mut tmp = cu.alloc::<u16>(g.rows * g.cols)?;
            let src = t.buf.slice(g.col0..);
            cu.copy2d(&src, g.ld, &mut tmp.as_view_mut(), g.cols, g.rows, g.cols)?;
            cu.dtoh_bf16(tmp.as_view(), shape)
        }
    }
}

pub(crate) fn write_region(
    cu: &CudaBackend,
    t: &mut CudaTensor,
    reg: Region,
    src: &HostTensor,
) -> Result<()> {
    shapes::write_region(&t.shape, reg, src.numel())?;
    let g = region_geom(reg, &t.shape)?;
    let n = g.rows * g.cols;
    if n == 0 {
        return Ok(());
    }
    let bits: Vec<u16> = src.data.iter().map(|&x| bf16_bits(x)).collect();
    let copy_err = |e| {
        anyhow!(
            "write_region {reg:?} of {:?}: host-to-device copy: {e:?}",
            t.shape
        )
    };
    match reg {
        Region::Full | Region::Rows { .. } => {
            let mut dst = t.buf.slice_mut(g.row0 * g.ld..(g.row0 + g.rows) * g.ld);
            cu.stream.memcpy_htod(&bits, &mut dst).map_err(copy_err)?;
        }
        Region::Cols { .. } => {
            let tmp = cu.htod(&bits)?;
            let mut dst = t.buf.slice_mut(g.col0..);
            cu.copy2d(&tmp.as_view(), g.cols, &mut dst, g.ld, g.rows, g.cols)?;
        }
    }
    Ok(())
}
