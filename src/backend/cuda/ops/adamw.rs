//! The optimizer on the GPU (`kernels/adamw.cu`): f32 master weights and moments on the
//! device, the global-norm sum of squares, the masked AdamW update.

use crate::backend::cuda::device::{elem_cfg, int, CudaBackend, CudaTensor};
use crate::backend::cuda::ops::rows::region_geom;
use crate::backend::cuda::registry;
use crate::backend::{shapes, AdamStep, HostTensor, ParamState, Region};
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

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

pub(crate) fn opt_new(cu: &CudaBackend, master: &HostTensor) -> Result<CudaOptState> {
    let len = master.numel();
    let zeros = || {
        cu.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| anyhow!("allocating optimizer state of {len} values: {e:?}"))
    };
    Ok(CudaOptState {
        master: cu.htod(&master.data)?,
        m: zeros()?,
        v: zeros()?,
        len,
    })
}

pub(crate) fn opt_read(cu: &CudaBackend, s: &CudaOptState) -> Result<ParamState> {
    let get = |b: &CudaSlice<f32>| -> Result<Vec<f32>> {
        if s.len == 0 {
            return Ok(vec![]);
        }
        cu.stream
            .clone_dtoh(&b.slice(0..s.len))
            .map_err(|e| anyhow!("reading optimizer state: {e:?}"))
    };
    Ok(ParamState {
        master: get(&s.master)?,
        m: get(&s.m)?,
        v: get(&s.v)?,
    })
}

pub(crate) fn opt_write(cu: &CudaBackend, s: &mut CudaOptState, host: &ParamState) -> Result<()> {
    let n = s.len;
    shapes::opt_write(n, host)?;
    if n == 0 {
        return Ok(());
    }
    for (dst, src) in [
        (&mut s.master, &host.master),
        (&mut s.m, &host.m),
        (&mut s.v, &host.v),
    ] {
        cu.stream
            .memcpy_htod(src, &mut dst.slice_mut(0..n))
            .map_err(|e| anyhow!("writing optimizer state: {e:?}"))?;
    }
    Ok(())
}

pub(crate) fn sum_squares(cu: &CudaBackend, g: &CudaTensor) -> Result<f64> {
    let len = g.numel();
    if len == 0 {
        return Ok(0.0);
    }
    let blocks = len.div_ceil(SS_THREADS).clamp(1, SS_MAX_BLOCKS);
    let mut part = cu.alloc::<f64>(blocks)?;
    let li = len as i64;
    let f = cu.func(registry::SUM_SQUARES_PART)?;
    let mut b = cu.stream.launch_builder(&f);
    b.arg(&g.buf).arg(&li).arg(&mut part);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (SS_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }.context("sum_squares_part")?;
    let host = cu
        .stream
        .clone_dtoh(&part)
        .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
    Ok(host[..blocks].iter().sum())
}

pub(crate) fn adamw_update(
    cu: &CudaBackend,
    s: &mut CudaOptState,
    g: &CudaTensor,
    w: &mut CudaTensor,
    reg: Region,
    a: &AdamStep,
) -> Result<()> {
    shapes::adamw(g.numel(), s.len, reg, &w.shape)?;
    let geo = region_geom(reg, &w.shape)?;
    let n = geo.rows * geo.cols;
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
    let f = cu.func(registry::ADAMW_REGION)?;
    let mut b = cu.stream.launch_builder(&f);
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
