//! The CUDA backend: bf16 storage, f32 accumulation, hand-written kernels (`kernels/*.cu`)
//! compiled at run time by NVRTC (see [`registry`]).
//!
//! Dtypes: every device tensor is bf16 (weights and activations alike, as a bf16 HF model
//! runs); `upload` rounds f32 to bf16 (nearest even) and `download` widens to f32. Inside
//! kernels everything is f32 (norms, softmax, GEMM accumulators) and rounded once on store.
//! Attention probabilities (`Pattern`) are computed and returned in f32.
//!
//! Linear layers use the engine's own tensor-core GEMM ([`Gemm::Engine`], the default),
//! cuBLAS ([`Gemm::Cublas`]), or the engine's GEMV for decode rows and cuBLAS for the rest
//! ([`Gemm::Auto`], what the command line picks).
//!
//! Work is queued on one stream; errors of a launch show up at the latest at the next
//! download or [`CudaBackend::synchronize`].

pub mod clock;
pub mod init;
pub mod ops;
pub mod registry;

pub use crate::backend::Gemm;
pub use ops::adamw::CudaOptState;
pub use ops::attention::{attn_bwd_tensor_cores, attn_tensor_cores, AttnKernels};

use super::{
    dims2, AdamStep, AttnShape, Backend, ParamState, Pattern, Region, SeqSpan, TrainBackend,
};
use crate::backend::HostTensor;
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use registry::{KernelFn, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Why CUDA cannot be used here, or `Ok` if a device, its driver and NVRTC are present.
/// Probes the libraries before any cudarc call (cudarc panics on a missing library).
pub fn cuda_available() -> Result<(), String> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda (the NVIDIA driver library) is not on the library path".into());
    }
    match CudaContext::device_count() {
        Ok(0) => return Err("the NVIDIA driver reports no CUDA device".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("the CUDA driver failed to start: {e:?}")),
    }
    registry::ensure_nvrtc()
}

/// A device tensor: bf16 elements, row-major, and its shape (1-D or 2-D).
pub struct CudaTensor {
    buf: CudaSlice<u16>,
    shape: Vec<usize>,
}

impl CudaTensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A size as a kernel `int`.
fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("{what} = {x} does not fit a kernel's 32-bit int"))
}

fn u32s(v: &[usize], what: &str) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| u32::try_from(x).map_err(|_| anyhow!("{what}: {x} does not fit u32")))
        .collect()
}

fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

const ELEM_THREADS: u32 = 256;

fn elem_cfg(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(ELEM_THREADS as usize).clamp(1, 8192) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

// Launch geometry shared with the kernels (keep in sync with the #defines there).

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    reg: Registry,
    gemm: Gemm,
    blas: OnceLock<Result<cudarc::cublas::CudaBlas, String>>,
    poison: AtomicBool,
    device: String,
}

impl CudaBackend {
    /// Open device `ordinal`. Fails with the reason of [`cuda_available`] when CUDA cannot
    /// be used, and on devices older than compute capability 8.0 (bf16 mma, cp.async).
    pub fn new(ordinal: usize) -> Result<Self> {
        cuda_available().map_err(|e| anyhow!("CUDA is not available: {e}"))?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("opening CUDA device {ordinal}: {e:?}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("reading the compute capability: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        ensure!(
            major >= 8,
            "{name} has compute capability {major}.{minor}; pinpoint's kernels need 8.0 or newer"
        );
        let arch = format!("sm_{major}{minor}");
        let stream = ctx.default_stream();
        Ok(Self {
            reg: Registry::new(ctx.clone(), arch.clone()),
            device: format!("cuda:{ordinal} {name} ({arch})"),
            ctx,
            stream,
            gemm: Gemm::Engine,
            blas: OnceLock::new(),
            poison: AtomicBool::new(false),
        })
    }

    /// Use `gemm` for `linear`.
    pub fn with_gemm(mut self, gemm: Gemm) -> Self {
        self.gemm = gemm;
        self
    }

    pub fn gemm(&self) -> Gemm {
        self.gemm
    }

    /// Tests: fill every freshly allocated output with NaN before the kernel writes it, so
    /// an element a kernel forgets to write shows up.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Compile (or read from the PTX cache) and load every kernel now.
    pub fn load_kernels(&self) -> Result<()> {
        self.reg.load_all()
    }

    /// Wait for queued work; returns the first asynchronous error, if any.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA error: {e:?}"))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn func(&self, f: KernelFn) -> Result<cudarc::driver::CudaFunction> {
        self.reg.get(f)
    }

    fn htod<T: DeviceRepr + Default + Clone>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        let r = if v.is_empty() {
            self.stream.clone_htod(&[T::default()])
        } else {
            self.stream.clone_htod(v)
        };
        r.map_err(|e| anyhow!("host-to-device copy: {e:?}"))
    }

    /// `len` elements of `T` (at least one allocated), NaN-filled when poisoning.
    fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller has a kernel write the `len` elements before any read.
        let mut buf = unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| anyhow!("allocating {len} elements on the GPU: {e:?}"))?;
        if self.poison.load(Ordering::Relaxed) {
            let halves = (len.max(1) * std::mem::size_of::<T>() / 2) as i64;
            let f = self.func(registry::FILL_U16)?;
            let value = 0xffffu32;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&mut buf).arg(&value).arg(&halves);
            unsafe { b.launch(elem_cfg(halves as usize)) }.context("fill_u16")?;
        }
        Ok(buf)
    }

    fn tensor(&self, shape: Vec<usize>) -> Result<CudaTensor> {
        let buf = self.alloc::<u16>(shape.iter().product())?;
        Ok(CudaTensor { buf, shape })
    }

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

    fn elementwise2(
        &self,
        f: KernelFn,
        a: &CudaTensor,
        b_in: &CudaTensor,
        what: &str,
    ) -> Result<CudaTensor> {
        super::shapes::same_shape(what, &a.shape, &b_in.shape)?;
        let len = a.numel();
        let mut out = self.tensor(a.shape.clone())?;
        if len == 0 {
            return Ok(out);
        }
        let li = int(len, "elements")?;
        let func = self.func(f)?;
        let mut b = self.stream.launch_builder(&func);
        b.arg(&a.buf).arg(&b_in.buf).arg(&mut out.buf).arg(&li);
        unsafe { b.launch(elem_cfg(len)) }.with_context(|| what.to_string())?;
        Ok(out)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn name(&self) -> String {
        format!("{} (bf16, gemm: {})", self.device, self.gemm.name())
    }
    fn device_name(&self) -> String {
        CudaBackend::device_name(self)
    }
    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }
    fn device_clock(&self) -> Result<Option<Box<dyn super::DeviceClock>>> {
        Ok(Some(Box::new(clock::CudaClock::new(self.stream.clone()))))
    }
    fn uniform(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<CudaTensor> {
        CudaBackend::uniform(self, shape, seed, scale, offset)
    }
    fn reset_peak_memory(&self) -> Result<()> {
        CudaBackend::reset_peak_memory(self)
    }
    fn peak_memory(&self) -> Result<Option<u64>> {
        CudaBackend::synchronize(self)?;
        let m = self.mem_info()?;
        Ok(Some(m.pool_used_high.unwrap_or((m.total - m.free) as u64)))
    }
    fn gemms(&self) -> &'static [Gemm] {
        &[Gemm::Cublas, Gemm::Engine]
    }
    fn linear_with_gemm(&self, x: &CudaTensor, w: &CudaTensor, gemm: Gemm) -> Result<CudaTensor> {
        self.linear_with(x, w, gemm)
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaTensor> {
        let n: usize = t.shape.iter().product();
        ensure!(
            n == t.data.len(),
            "upload: shape {:?} for {} values",
            t.shape,
            t.data.len()
        );
        let bits: Vec<u16> = t.data.iter().map(|&x| bf16_bits(x)).collect();
        Ok(CudaTensor {
            buf: self.htod(&bits)?,
            shape: t.shape.clone(),
        })
    }

    fn download(&self, t: &CudaTensor) -> Result<HostTensor> {
        let n = t.numel();
        if n == 0 {
            return Ok(HostTensor::new(t.shape.clone(), vec![]));
        }
        let bits = self
            .stream
            .clone_dtoh(&t.buf.slice(0..n))
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        // Widening is a pass over every element: parallel for big tensors.
        let data: Vec<f32> = if n >= 1 << 20 {
            use rayon::prelude::*;
            bits.par_iter().map(|&b| bf16_value(b)).collect()
        } else {
            bits.into_iter().map(bf16_value).collect()
        };
        Ok(HostTensor::new(t.shape.clone(), data))
    }

    fn shape<'a>(&self, t: &'a CudaTensor) -> &'a [usize] {
        &t.shape
    }

    fn reshape(&self, mut t: CudaTensor, shape: &[usize]) -> Result<CudaTensor> {
        crate::backend::check_reshape(&t.shape, shape)?;
        t.shape = shape.to_vec();
        Ok(t)
    }

    fn zeros(&self, shape: &[usize]) -> Result<CudaTensor> {
        let n: usize = shape.iter().product();
        let buf = self
            .stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| anyhow!("allocating {n} zeros on the GPU: {e:?}"))?;
        Ok(CudaTensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    fn embed(&self, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
        ops::embed::embed(self, table, ids)
    }

    fn rmsnorm(&self, x: &CudaTensor, w: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        ops::norm::rmsnorm(self, x, w, eps)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        self.linear_with(x, w, self.gemm)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        super::shapes::same_shape("add", &x.shape, &y.shape)?;
        let len = x.numel();
        if len == 0 {
            return Ok(());
        }
        let li = int(len, "elements")?;
        let f = self.func(registry::ADD_INPLACE)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.buf).arg(&y.buf).arg(&li);
        unsafe { b.launch(elem_cfg(len)) }.context("add_inplace")?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        self.rope_launch(registry::ROPE_ROTATE_HALF, x, head_dim, positions, inv_freq)
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

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(CudaTensor, Vec<Pattern>)> {
        self.attention_with(q, k, v, spans, shape, want, AttnKernels::from_env())
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise2(registry::SWIGLU, gate, up, "swiglu")
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        ops::rows::gather_rows(self, x, rows)
    }

    fn scatter_rows(&self, dst: &mut CudaTensor, rows: &[usize], src: &CudaTensor) -> Result<()> {
        ops::rows::scatter_rows(self, dst, rows, src)
    }

    fn write_slices(
        &self,
        x: &mut CudaTensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()> {
        ops::rows::write_slices(self, x, rows, col0, values)
    }

    fn norm_dot(
        &self,
        x: &CudaTensor,
        norm: &CudaTensor,
        eps: f32,
        w: &CudaTensor,
    ) -> Result<HostTensor> {
        ops::norm::norm_dot(self, x, norm, eps, w)
    }
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

    fn rope_bwd(
        &self,
        dx: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        self.rope_launch(registry::ROPE_BWD, dx, head_dim, positions, inv_freq)
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

    type OptState = CudaOptState;

    fn linear_bwd_input(&self, dy: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        ops::linear::linear_bwd_input(self, dy, w)
    }

    fn linear_bwd_weight(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        reg: Region,
        dw_reg: &mut CudaTensor,
    ) -> Result<()> {
        ops::linear::linear_bwd_weight(self, dy, x, reg, dw_reg)
    }

    fn rmsnorm_bwd(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        dw: Option<&mut CudaTensor>,
    ) -> Result<CudaTensor> {
        ops::norm::rmsnorm_bwd(self, dy, x, w, eps, dw)
    }

    fn swiglu_bwd(
        &self,
        dact: &CudaTensor,
        gate: &CudaTensor,
        up: &CudaTensor,
    ) -> Result<(CudaTensor, CudaTensor)> {
        ops::swiglu::swiglu_bwd(self, dact, gate, up)
    }

    fn embed_bwd(&self, dx: &CudaTensor, ids: &[u32], dtable: &mut CudaTensor) -> Result<()> {
        ops::embed::embed_bwd(self, dx, ids, dtable)
    }

    fn xent_fwd_bwd(
        &self,
        logits: &CudaTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, CudaTensor)> {
        ops::xent::xent_fwd_bwd(self, logits, targets, scale)
    }

    fn read_region(&self, t: &CudaTensor, reg: Region) -> Result<HostTensor> {
        ops::rows::read_region(self, t, reg)
    }

    fn write_region(&self, t: &mut CudaTensor, reg: Region, src: &HostTensor) -> Result<()> {
        ops::rows::write_region(self, t, reg, src)
    }

    fn opt_new(&self, master: &HostTensor) -> Result<CudaOptState> {
        ops::adamw::opt_new(self, master)
    }

    fn opt_read(&self, s: &CudaOptState) -> Result<ParamState> {
        ops::adamw::opt_read(self, s)
    }

    fn opt_write(&self, s: &mut CudaOptState, host: &ParamState) -> Result<()> {
        ops::adamw::opt_write(self, s, host)
    }

    fn sum_squares(&self, g: &CudaTensor) -> Result<f64> {
        ops::adamw::sum_squares(self, g)
    }

    fn adamw_update(
        &self,
        s: &mut CudaOptState,
        g: &CudaTensor,
        w: &mut CudaTensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        ops::adamw::adamw_update(self, s, g, w, reg, a)
    }
}
