//! [`TrainBackend`] for [`CudaBackend`]: the backward ops on bf16 device tensors (f32 math
//! inside the kernels, one rounding on store), weight-gradient GEMMs by cuBLAS.
//!
//! Kernels: `kernels/attention_bwd.cu`, `norm_bwd.cu`, `elem_bwd.cu`, `embed_bwd.cu`,
//! `xent_bwd.cu`. Conventions as the trait: param grads `+=` (read, add in f32, round once),
//! activation grads `=` (fresh tensors). Sums that several threads would race on are done
//! without atomics: one owner per output element (embedding rows grouped on the host,
//! dK/dV key-major, the norm weight column-major).

use super::{attn_bwd_tensor_cores, attn_tc_tiles, AttnKernels, ATT_TC_THREADS};
use super::{bf16_bits, bf16_value, ATT_MAXD};
use super::{dims2, elem_cfg, int, registry, rows_cfg, CudaBackend, CudaTensor};
use crate::backend::HostTensor;
use crate::backend::{AdamStep, ParamState, Region, TrainBackend};
use crate::backend::{AttnShape, Backend, SeqSpan};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Warps per block of the attention backward kernels (`AB_WPB` in attention_bwd.cu).
const AB_WPB: usize = 4;
/// Threads per block of `xent_fwd_bwd` (`XE_THREADS`).
const XE_THREADS: u32 = 256;
/// Block of `rmsnorm_bwd_dw`: `(NB_COLS, NB_ROWS)`.
const NB_COLS: usize = 32;
const NB_ROWS: u32 = 8;

/// Threads per block of `sum_squares_part` (`SS_THREADS` in adamw.cu) and its most blocks.
const SS_THREADS: usize = 256;
const SS_MAX_BLOCKS: usize = 1024;

/// AdamW state of one trainable buffer, on the device: f32 master weights and moments,
/// `len` values each, row-major like the buffer's region.
pub struct CudaOptState {
    master: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    len: usize,
}

impl CudaOptState {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

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

/// Attention backward needs whole packed sequences whose query and key rows do not overlap
/// between spans (each output row has one writer).
fn check_packed_spans(spans: &[SeqSpan], n: usize, kv_rows: usize) -> Result<()> {
    for s in spans {
        if s.q_len == 0 {
            // SeqSpan::check assumes at least one query (pos0 + q_len - 1).
            ensure!(
                s.q_start <= n,
                "attention_bwd: span {s:?} starts past {n} rows"
            );
            continue;
        }
        s.check(n, kv_rows)?;
        ensure!(
            s.pos0 == 0 && s.kv_new.is_none(),
            "attention_bwd on CUDA supports whole packed sequences only (pos0 = 0, no \
             kv_new); got span {s:?}"
        );
    }
    for (what, start) in [
        ("query", (|s: &SeqSpan| s.q_start) as fn(&SeqSpan) -> usize),
        ("key", |s: &SeqSpan| s.kv_start),
    ] {
        let mut r: Vec<(usize, usize)> = spans
            .iter()
            .filter(|s| s.q_len > 0)
            .map(|s| (start(s), start(s) + s.q_len))
            .collect();
        r.sort_unstable();
        for w in r.windows(2) {
            ensure!(
                w[0].1 <= w[1].0,
                "attention_bwd on CUDA: spans overlap in their {what} rows ({:?} and {:?})",
                w[0],
                w[1]
            );
        }
    }
    Ok(())
}

impl TrainBackend for CudaBackend {
    fn elem_bytes(&self) -> usize {
        2 // bf16 activations
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.context().mem_get_info().ok()
    }

    fn copy(&self, t: &CudaTensor) -> Result<CudaTensor> {
        let buf = self
            .stream
            .clone_dtod(&t.buf)
            .map_err(|e| anyhow!("copy of a {:?} tensor on the GPU: {e:?}", t.shape))?;
        Ok(CudaTensor {
            buf,
            shape: t.shape.clone(),
        })
    }

    fn scale(&self, x: &mut CudaTensor, s: f32) -> Result<()> {
        let len = x.numel();
        if len == 0 {
            return Ok(());
        }
        let li = len as i64;
        let f = self.func(registry::SCALE_BF16)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.buf).arg(&s).arg(&li);
        unsafe { b.launch(elem_cfg(len)) }.context("scale_bf16")?;
        Ok(())
    }

    fn linear_bwd_input(&self, dy: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        let (n, m) = dims2(&dy.shape)?;
        let (m2, k) = dims2(&w.shape)?;
        ensure!(
            m == m2,
            "linear_bwd_input: dy {:?} has {m} columns, weight {:?} has {m2} rows",
            dy.shape,
            w.shape
        );
        if m == 0 {
            return self.zeros(&[n, k]);
        }
        let mut dx = self.tensor(vec![n, k])?;
        if n == 0 || k == 0 {
            return Ok(dx);
        }
        let (ni, mi, ki) = (
            int(n, "rows")?,
            int(m, "out features")?,
            int(k, "in features")?,
        );
        {
            let (dyp, _g1) = dy.buf.device_ptr(&self.stream);
            let (wp, _g2) = w.buf.device_ptr(&self.stream);
            let (dxp, _g3) = dx.buf.device_ptr_mut(&self.stream);
            // dx[n, k] = dy[n, m] @ w[m, k].
            // SAFETY: buffers of the checked shapes; the guards outlive the queued call.
            unsafe {
                self.gemm_rm(
                    false,
                    false,
                    (ni, ki, mi),
                    (dyp, mi),
                    (wp, ki),
                    (dxp, ki),
                    0.0,
                )
            }
            .with_context(|| format!("linear_bwd_input: dy {:?}, w {:?}", dy.shape, w.shape))?;
        }
        Ok(dx)
    }

    fn linear_bwd_weight(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        reg: Region,
        dw_reg: &mut CudaTensor,
    ) -> Result<()> {
        let (n, m) = dims2(&dy.shape)?;
        let (n2, k) = dims2(&x.shape)?;
        ensure!(
            n == n2,
            "linear_bwd_weight: dy {:?} and x {:?} differ in rows",
            dy.shape,
            x.shape
        );
        let g = region_geom(reg, &[m, k])?;
        ensure!(
            dw_reg.numel() == g.rows * g.cols,
            "linear_bwd_weight: grad buffer {:?} for region {reg:?} of [{m}, {k}]",
            dw_reg.shape
        );
        if n == 0 || g.rows == 0 || g.cols == 0 {
            return Ok(()); // nothing to add
        }
        let (ni, mi, ki) = (
            int(n, "rows")?,
            int(m, "out features")?,
            int(k, "in features")?,
        );
        let (gr, gc) = (int(g.rows, "region rows")?, int(g.cols, "region cols")?);
        let (dyp, _g1) = dy.buf.device_ptr(&self.stream);
        let (xp, _g2) = x.buf.device_ptr(&self.stream);
        let (dwp, _g3) = dw_reg.buf.device_ptr_mut(&self.stream);
        // dw_reg[rows, cols] += dy[:, row0 .. row0 + rows]^T [rows, n] @ x[:, col0 .. col0 +
        // cols] [n, cols]: the region's rows are columns of dy, its columns columns of x
        // (one of the two offsets is 0). bf16 is 2 bytes.
        let a = dyp + 2 * g.row0 as u64;
        let b = xp + 2 * g.col0 as u64;
        // SAFETY: dy [n, m] holds columns row0 .. row0 + rows (region checked), x [n, k] holds
        // columns col0 .. col0 + cols; dw_reg holds rows * cols; guards outlive the call.
        unsafe { self.gemm_rm(true, false, (gr, gc, ni), (a, mi), (b, ki), (dwp, gc), 1.0) }
            .with_context(|| {
                format!(
                    "linear_bwd_weight: dy {:?}, x {:?}, region {reg:?}",
                    dy.shape, x.shape
                )
            })
    }

    fn rmsnorm_bwd(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        dw: Option<&mut CudaTensor>,
    ) -> Result<CudaTensor> {
        let (n, d) = dims2(&x.shape)?;
        ensure!(
            dy.shape == x.shape,
            "rmsnorm_bwd: dy {:?} vs x {:?}",
            dy.shape,
            x.shape
        );
        ensure!(
            w.numel() == d,
            "rmsnorm_bwd: weight of {} for rows of {d}",
            w.numel()
        );
        if let Some(dw) = &dw {
            ensure!(
                dw.numel() == d,
                "rmsnorm_bwd: dw has {} elements, rows {d}",
                dw.numel()
            );
        }
        let mut dx = self.tensor(vec![n, d])?;
        if n == 0 || d == 0 {
            return Ok(dx);
        }
        let (ni, di) = (int(n, "rows")?, int(d, "cols")?);
        // r of every row, for the weight gradient.
        let mut rs = match dw {
            Some(_) => Some(self.alloc::<f32>(n)?),
            None => None,
        };
        let f = self.func(registry::RMSNORM_BWD_DX)?;
        let mut b = self.stream.launch_builder(&f);
        let null = 0u64;
        b.arg(&dy.buf).arg(&x.buf).arg(&w.buf).arg(&mut dx.buf);
        match rs.as_mut() {
            Some(r) => b.arg(r),
            None => b.arg(&null),
        };
        b.arg(&ni).arg(&di).arg(&eps);
        unsafe { b.launch(rows_cfg(n, 256)) }.context("rmsnorm_bwd_dx")?;
        if let (Some(dw), Some(rs)) = (dw, rs.as_ref()) {
            let f = self.func(registry::RMSNORM_BWD_DW)?;
            let mut b = self.stream.launch_builder(&f);
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

    fn rope_bwd(
        &self,
        dx: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        theta: f64,
    ) -> Result<()> {
        self.rope_launch(registry::ROPE_BWD, dx, head_dim, positions, theta)
    }

    fn attention_bwd(
        &self,
        dz: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        self.attention_bwd_with(dz, q, k, v, spans, shape, AttnKernels::from_env())
    }

    fn swiglu_bwd(
        &self,
        dact: &CudaTensor,
        gate: &CudaTensor,
        up: &CudaTensor,
    ) -> Result<(CudaTensor, CudaTensor)> {
        ensure!(
            gate.shape == up.shape && dact.shape == gate.shape,
            "swiglu_bwd: shapes {:?} {:?} {:?}",
            dact.shape,
            gate.shape,
            up.shape
        );
        let len = gate.numel();
        let mut dg = self.tensor(gate.shape.clone())?;
        let mut du = self.tensor(gate.shape.clone())?;
        if len == 0 {
            return Ok((dg, du));
        }
        let li = len as i64;
        let f = self.func(registry::SWIGLU_BWD)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&dact.buf)
            .arg(&gate.buf)
            .arg(&up.buf)
            .arg(&mut dg.buf)
            .arg(&mut du.buf)
            .arg(&li);
        unsafe { b.launch(elem_cfg(len)) }.context("swiglu_bwd")?;
        Ok((dg, du))
    }

    fn embed_bwd(&self, dx: &CudaTensor, ids: &[u32], dtable: &mut CudaTensor) -> Result<()> {
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
        let (uid_d, start_d, rows_d) = (self.htod(&uid)?, self.htod(&start)?, self.htod(&order)?);
        let (nui, di) = (int(nu, "distinct ids")?, int(d, "cols")?);
        let f = self.func(registry::EMBED_BWD)?;
        let mut b = self.stream.launch_builder(&f);
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

    fn xent_fwd_bwd(
        &self,
        logits: &CudaTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, CudaTensor)> {
        let (n, vocab) = dims2(&logits.shape)?;
        ensure!(
            targets.len() == n,
            "xent: {} targets for {n} rows of logits {:?}",
            targets.len(),
            logits.shape
        );
        if let Some(t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
            bail!("xent: target {t} outside the vocabulary of {vocab}");
        }
        let mut dl = self.tensor(vec![n, vocab])?;
        if n == 0 {
            return Ok((0.0, dl));
        }
        ensure!(vocab > 0, "xent: empty vocabulary");
        let (ni, vi) = (int(n, "rows")?, int(vocab, "vocab")?);
        let tg: Vec<i32> = targets.iter().map(|t| t.map_or(-1, |t| t as i32)).collect();
        let tg_d = self.htod(&tg)?;
        let mut loss = self.alloc::<f32>(n)?;
        let f = self.func(registry::XENT_FWD_BWD)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&logits.buf)
            .arg(&tg_d)
            .arg(&mut dl.buf)
            .arg(&mut loss)
            .arg(&ni)
            .arg(&vi)
            .arg(&scale);
        unsafe { b.launch(rows_cfg(n, XE_THREADS)) }.context("xent_fwd_bwd")?;
        let per_row = self
            .stream
            .clone_dtoh(&loss)
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        // f32 per row, summed in f64 in row order, as the oracle.
        let total = per_row[..n].iter().map(|&l| l as f64).sum();
        Ok((total, dl))
    }

    fn read_region(&self, t: &CudaTensor, reg: Region) -> Result<HostTensor> {
        let g = region_geom(reg, &t.shape)?;
        let shape = reg.shape(&t.shape);
        if g.rows * g.cols == 0 {
            return Ok(HostTensor::new(shape, vec![]));
        }
        match reg {
            Region::Full => self.download(t),
            Region::Rows { .. } => {
                let view = t.buf.slice(g.row0 * g.ld..(g.row0 + g.rows) * g.ld);
                self.dtoh_bf16(view, shape)
            }
            Region::Cols { .. } => {
                let mut tmp = self.alloc::<u16>(g.rows * g.cols)?;
                let src = t.buf.slice(g.col0..);
                self.copy2d(&src, g.ld, &mut tmp.as_view_mut(), g.cols, g.rows, g.cols)?;
                self.dtoh_bf16(tmp.as_view(), shape)
            }
        }
    }

    fn write_region(&self, t: &mut CudaTensor, reg: Region, src: &HostTensor) -> Result<()> {
        let g = region_geom(reg, &t.shape)?;
        let n = g.rows * g.cols;
        ensure!(
            src.numel() == n,
            "write_region: {} values for {reg:?} of {:?}",
            src.numel(),
            t.shape
        );
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
                self.stream.memcpy_htod(&bits, &mut dst).map_err(copy_err)?;
            }
            Region::Cols { .. } => {
                let tmp = self.htod(&bits)?;
                let mut dst = t.buf.slice_mut(g.col0..);
                self.copy2d(&tmp.as_view(), g.cols, &mut dst, g.ld, g.rows, g.cols)?;
            }
        }
        Ok(())
    }

    type OptState = CudaOptState;

    fn opt_new(&self, master: &HostTensor) -> Result<CudaOptState> {
        let len = master.numel();
        let zeros = || {
            self.stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(|e| anyhow!("allocating optimizer state of {len} values: {e:?}"))
        };
        Ok(CudaOptState {
            master: self.htod(&master.data)?,
            m: zeros()?,
            v: zeros()?,
            len,
        })
    }

    fn opt_read(&self, s: &CudaOptState) -> Result<ParamState> {
        let get = |b: &CudaSlice<f32>| -> Result<Vec<f32>> {
            if s.len == 0 {
                return Ok(vec![]);
            }
            self.stream
                .clone_dtoh(&b.slice(0..s.len))
                .map_err(|e| anyhow!("reading optimizer state: {e:?}"))
        };
        Ok(ParamState {
            master: get(&s.master)?,
            m: get(&s.m)?,
            v: get(&s.v)?,
        })
    }

    fn opt_write(&self, s: &mut CudaOptState, host: &ParamState) -> Result<()> {
        let n = s.len;
        ensure!(
            host.master.len() == n && host.m.len() == n && host.v.len() == n,
            "optimizer state of {n} values written with {}/{}/{}",
            host.master.len(),
            host.m.len(),
            host.v.len()
        );
        if n == 0 {
            return Ok(());
        }
        for (dst, src) in [
            (&mut s.master, &host.master),
            (&mut s.m, &host.m),
            (&mut s.v, &host.v),
        ] {
            self.stream
                .memcpy_htod(src, &mut dst.slice_mut(0..n))
                .map_err(|e| anyhow!("writing optimizer state: {e:?}"))?;
        }
        Ok(())
    }

    fn sum_squares(&self, g: &CudaTensor) -> Result<f64> {
        let len = g.numel();
        if len == 0 {
            return Ok(0.0);
        }
        let blocks = len.div_ceil(SS_THREADS).clamp(1, SS_MAX_BLOCKS);
        let mut part = self.alloc::<f64>(blocks)?;
        let li = len as i64;
        let f = self.func(registry::SUM_SQUARES_PART)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&g.buf).arg(&li).arg(&mut part);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (SS_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.context("sum_squares_part")?;
        let host = self
            .stream
            .clone_dtoh(&part)
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        Ok(host[..blocks].iter().sum())
    }

    fn adamw_update(
        &self,
        s: &mut CudaOptState,
        g: &CudaTensor,
        w: &mut CudaTensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        let geo = region_geom(reg, &w.shape)?;
        let n = geo.rows * geo.cols;
        ensure!(
            g.numel() == s.len && n == s.len,
            "adamw: gradient {:?}, state of {}, region {reg:?} of {:?}",
            g.shape,
            s.len,
            w.shape
        );
        if n == 0 {
            return Ok(());
        }
        let li = n as i64;
        let (rc, ld, r0, c0) = (
            int(geo.cols, "region cols")?,
            int(geo.ld, "row stride")?,
            int(geo.row0, "region row")?,
            int(geo.col0, "region col")?,
        );
        let f = self.func(registry::ADAMW_REGION)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut s.master)
            .arg(&mut s.m)
            .arg(&mut s.v)
            .arg(&g.buf)
            .arg(&mut w.buf)
            .arg(&li)
            .arg(&rc)
            .arg(&ld)
            .arg(&r0)
            .arg(&c0)
            .arg(&a.beta1)
            .arg(&a.beta2)
            .arg(&a.eps)
            .arg(&a.step_size)
            .arg(&a.bc2_sqrt)
            .arg(&a.decay)
            .arg(&a.clip);
        unsafe { b.launch(elem_cfg(n)) }
            .with_context(|| format!("adamw_region: {reg:?} of {:?}", w.shape))?;
        Ok(())
    }
}

impl CudaBackend {
    /// [`TrainBackend::attention_bwd`] with the kernel choice explicit (tests run both):
    /// `Auto` takes the tensor-core kernels where [`attn_bwd_tensor_cores`] says they apply.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd_with(
        &self,
        dz: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        kernels: AttnKernels,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        let AttnShape {
            n_heads,
            n_kv_heads,
            head_dim: dh,
            window,
        } = shape;
        let (n, qc) = dims2(&q.shape)?;
        let (kr, kc) = dims2(&k.shape)?;
        ensure!(
            qc == n_heads * dh && kc == n_kv_heads * dh && dz.shape == q.shape,
            "attention_bwd: bad widths: q {:?}, k {:?}, dz {:?} for {n_heads} heads, \
             {n_kv_heads} kv heads of {dh}",
            q.shape,
            k.shape,
            dz.shape
        );
        ensure!(
            k.shape == v.shape,
            "attention_bwd: k {:?} and v {:?} differ",
            k.shape,
            v.shape
        );
        ensure!(
            n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
            "attention_bwd: {n_heads} query heads over {n_kv_heads} key/value heads"
        );
        ensure!(
            dh > 0 && dh.is_multiple_of(2) && dh <= ATT_MAXD,
            "attention_bwd: head_dim {dh} must be even and at most {ATT_MAXD} on CUDA"
        );
        ensure!(
            window != Some(0),
            "attention_bwd: a sliding window of 0 hides every key"
        );
        ensure!(
            n_heads < 65536,
            "attention_bwd: {n_heads} heads is too many"
        );
        check_packed_spans(spans, n, kr)?;
        // Rows outside every span get zero gradients, as the oracle.
        let mut dq = self.zeros(&[n, qc])?;
        let mut dk = self.zeros(&[kr, kc])?;
        let mut dv = self.zeros(&[kr, kc])?;
        if kernels == AttnKernels::Auto && attn_bwd_tensor_cores(spans, shape) {
            self.attention_bwd_tc(dz, q, k, v, spans, shape, &mut dq, &mut dk, &mut dv)?;
            return Ok((dq, dk, dv));
        }
        let mut qtiles: Vec<i32> = Vec::new(); // {q_start, i0, nq, kv_start}
        let mut ktiles: Vec<i32> = Vec::new(); // {q_start, j0, nk, kv_start, q_len}
        for s in spans {
            let (qs, ks, ql) = (
                int(s.q_start, "q_start")?,
                int(s.kv_start, "kv_start")?,
                int(s.q_len, "q_len")?,
            );
            for i0 in (0..s.q_len).step_by(AB_WPB) {
                let nt = int(AB_WPB.min(s.q_len - i0), "tile")?;
                let i0 = int(i0, "query")?;
                qtiles.extend([qs, i0, nt, ks]);
                ktiles.extend([qs, i0, nt, ks, ql]);
            }
        }
        let ntiles = qtiles.len() / 4;
        if ntiles == 0 {
            return Ok((dq, dk, dv));
        }
        ensure!(ntiles < i32::MAX as usize, "attention_bwd: too many tiles");
        let (hi, gi, di) = (
            int(n_heads, "heads")?,
            int(n_kv_heads, "kv heads")?,
            int(dh, "head_dim")?,
        );
        let wi = int(window.unwrap_or(0), "window")?;
        // lse and D = sum_j P_ij dP_ij of every (query row, head), for the second kernel.
        let mut lse = self.alloc::<f32>(n * n_heads)?;
        let mut dsum = self.alloc::<f32>(n * n_heads)?;
        let qt = self.htod(&qtiles)?;
        let kt = self.htod(&ktiles)?;
        let f = self.func(registry::ATTN_BWD_DQ)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.buf)
            .arg(&k.buf)
            .arg(&v.buf)
            .arg(&dz.buf)
            .arg(&mut dq.buf)
            .arg(&mut lse)
            .arg(&mut dsum)
            .arg(&qt)
            .arg(&hi)
            .arg(&gi)
            .arg(&di)
            .arg(&wi);
        let cfg = LaunchConfig {
            grid_dim: (ntiles as u32, n_heads as u32, 1),
            block_dim: ((AB_WPB * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }
            .with_context(|| format!("attn_bwd_dq: q {:?}, k {:?}, {shape:?}", q.shape, k.shape))?;
        let f = self.func(registry::ATTN_BWD_DKV)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.buf)
            .arg(&k.buf)
            .arg(&v.buf)
            .arg(&dz.buf)
            .arg(&lse)
            .arg(&dsum)
            .arg(&mut dk.buf)
            .arg(&mut dv.buf)
            .arg(&kt)
            .arg(&hi)
            .arg(&gi)
            .arg(&di)
            .arg(&wi);
        let cfg = LaunchConfig {
            grid_dim: (ntiles as u32, n_kv_heads as u32, 1),
            block_dim: ((AB_WPB * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { b.launch(cfg) }.with_context(|| {
            format!("attn_bwd_dkv: q {:?}, k {:?}, {shape:?}", q.shape, k.shape)
        })?;
        Ok((dq, dk, dv))
    }

    /// Tensor-core backward (`attention_tc.cu`), after `attention_bwd_with`'s checks: the
    /// stats kernel recomputes lse and `dsum_i = dz_i . z_i` (z in f32), then `dq` per
    /// (64-query tile, head) and `dk`, `dv` per (64-key tile, kv group), each element one
    /// writer. Rows outside every span keep the zeros they came with.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd_tc(
        &self,
        dz: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        dq: &mut CudaTensor,
        dk: &mut CudaTensor,
        dv: &mut CudaTensor,
    ) -> Result<()> {
        let n = q.shape[0];
        let tiles = attn_tc_tiles(spans)?;
        if tiles.is_empty() {
            return Ok(());
        }
        let (hi, gi) = (
            int(shape.n_heads, "heads")?,
            int(shape.n_kv_heads, "kv heads")?,
        );
        let wi = int(shape.window.unwrap_or(0), "window")?;
        let d64 = shape.head_dim == 64;
        let mut lse = self.alloc::<f32>(n * shape.n_heads)?;
        let mut dsum = self.alloc::<f32>(n * shape.n_heads)?;
        let td = self.htod(&tiles)?;
        let ntiles = (tiles.len() / 3) as u32;
        let cfg = |y: usize| LaunchConfig {
            grid_dim: (ntiles, y as u32, 1),
            block_dim: (ATT_TC_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let ctx = |what: &str| format!("{what}: q {:?}, k {:?}, {shape:?}", q.shape, k.shape);

        let f = self.func(if d64 {
            registry::ATTN_TC_STATS_D64
        } else {
            registry::ATTN_TC_STATS_D128
        })?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.buf)
            .arg(&k.buf)
            .arg(&v.buf)
            .arg(&dz.buf)
            .arg(&mut lse)
            .arg(&mut dsum)
            .arg(&td)
            .arg(&hi)
            .arg(&gi)
            .arg(&wi);
        unsafe { b.launch(cfg(shape.n_heads)) }.with_context(|| ctx("attn_tc_stats"))?;

        let f = self.func(if d64 {
            registry::ATTN_TC_DQ_D64
        } else {
            registry::ATTN_TC_DQ_D128
        })?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.buf)
            .arg(&k.buf)
            .arg(&v.buf)
            .arg(&dz.buf)
            .arg(&lse)
            .arg(&dsum)
            .arg(&mut dq.buf)
            .arg(&td)
            .arg(&hi)
            .arg(&gi)
            .arg(&wi);
        unsafe { b.launch(cfg(shape.n_heads)) }.with_context(|| ctx("attn_tc_dq"))?;

        let f = self.func(if d64 {
            registry::ATTN_TC_DKV_D64
        } else {
            registry::ATTN_TC_DKV_D128
        })?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.buf)
            .arg(&k.buf)
            .arg(&v.buf)
            .arg(&dz.buf)
            .arg(&lse)
            .arg(&dsum)
            .arg(&mut dk.buf)
            .arg(&mut dv.buf)
            .arg(&td)
            .arg(&hi)
            .arg(&gi)
            .arg(&wi);
        unsafe { b.launch(cfg(shape.n_kv_heads)) }.with_context(|| ctx("attn_tc_dkv"))?;
        Ok(())
    }
}
