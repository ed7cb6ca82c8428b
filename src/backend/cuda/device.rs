//! The CUDA device: the backend's struct (context, stream, kernels, cuBLAS handle), device
//! tensors, buffers and launch helpers every op uses, random tensors made on the device
//! (`kernels/init.cu`, for benchmarks), device copies, and memory figures (free/total, and
//! the stream-ordered pool's high-water mark, the peak of what cudarc's `cuMemAllocAsync`
//! allocations held).

use super::registry::{self, KernelFn, Registry};
use crate::backend::Gemm;
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{
    sys, CudaContext, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
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
    pub(super) buf: CudaSlice<u16>,
    pub(super) shape: Vec<usize>,
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
pub(super) fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("{what} = {x} does not fit a kernel's 32-bit int"))
}

pub(super) fn u32s(v: &[usize], what: &str) -> Result<Vec<u32>> {
    v.iter()
        .map(|&x| u32::try_from(x).map_err(|_| anyhow!("{what}: {x} does not fit u32")))
        .collect()
}

pub(super) fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

pub(super) fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

const ELEM_THREADS: u32 = 256;

pub(super) fn elem_cfg(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(ELEM_THREADS as usize).clamp(1, 8192) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) reg: Registry,
    pub(super) gemm: Gemm,
    pub(super) blas: OnceLock<Result<cudarc::cublas::CudaBlas, String>>,
    pub(super) poison: AtomicBool,
    pub(super) device: String,
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

    pub(super) fn func(&self, f: KernelFn) -> Result<cudarc::driver::CudaFunction> {
        self.reg.get(f)
    }

    pub(super) fn htod<T: DeviceRepr + Default + Clone>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        let r = if v.is_empty() {
            self.stream.clone_htod(&[T::default()])
        } else {
            self.stream.clone_htod(v)
        };
        r.map_err(|e| anyhow!("host-to-device copy: {e:?}"))
    }

    /// `len` elements of `T` (at least one allocated), NaN-filled when poisoning.
    pub(super) fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
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

    pub(super) fn tensor(&self, shape: Vec<usize>) -> Result<CudaTensor> {
        let buf = self.alloc::<u16>(shape.iter().product())?;
        Ok(CudaTensor { buf, shape })
    }
}

/// Memory of the device: `(free, total)` bytes and, where allocations come from the
/// stream-ordered pool, the pool's peak of bytes in use since the last reset.
#[derive(Debug, Clone, Copy)]
pub struct MemInfo {
    pub free: usize,
    pub total: usize,
    pub pool_used_high: Option<u64>,
}

impl CudaBackend {
    /// A `shape` tensor of bf16 uniform(offset - scale, offset + scale) values, made on the
    /// device (see `kernels/init.cu`; `scale = 0` gives a constant).
    pub fn uniform(
        &self,
        shape: &[usize],
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<CudaTensor> {
        let len = shape.iter().product::<usize>();
        let mut buf = self.alloc::<u16>(len)?;
        if len > 0 {
            let f = self.func(registry::INIT_UNIFORM)?;
            let n = len as i64;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&mut buf).arg(&n).arg(&seed).arg(&scale).arg(&offset);
            unsafe { b.launch(elem_cfg(len)) }.context("init_uniform")?;
        }
        Ok(CudaTensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    /// A device-to-device copy of `t` (the copy-bandwidth yardstick).
    pub fn copy_tensor(&self, t: &CudaTensor) -> Result<CudaTensor> {
        let buf = self
            .stream
            .clone_dtod(&t.buf)
            .map_err(|e| anyhow!("copy of a {:?} tensor on the GPU: {e:?}", t.shape))?;
        Ok(CudaTensor {
            buf,
            shape: t.shape.clone(),
        })
    }

    /// The device's name as the driver reports it (e.g. "NVIDIA H100 80GB HBM3").
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Free/total memory, and the pool's high-water mark (None when the driver gives no
    /// stream-ordered pool).
    pub fn mem_info(&self) -> Result<MemInfo> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| anyhow!("cuMemGetInfo: {e:?}"))?;
        let attr = |p: sys::CUmemoryPool, a: sys::CUmemPool_attribute| {
            let mut v: u64 = 0;
            // SAFETY: `p` is the device's current pool; both attributes are cuuint64_t.
            unsafe { sys::cuMemPoolGetAttribute(p, a, &mut v as *mut u64 as *mut _) }
                .result()
                .ok()
                .map(|_| v)
        };
        // The high-water mark, and at least what is in use now (a mark reset to 0 rises
        // only at the next allocation).
        let pool_used_high = self.pool().and_then(|p| {
            let high = attr(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
            let now = attr(
                p,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            )
            .unwrap_or(0);
            Some(high.max(now))
        });
        Ok(MemInfo {
            free,
            total,
            pool_used_high,
        })
    }

    /// Reset the pool's high-water mark to what is in use now (waits for queued work).
    pub fn reset_peak_memory(&self) -> Result<()> {
        self.synchronize()?;
        if let Some(p) = self.pool() {
            let mut zero: u64 = 0;
            // SAFETY: as in `mem_info`; setting USED_MEM_HIGH accepts only 0 (a reset).
            unsafe {
                sys::cuMemPoolSetAttribute(
                    p,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    &mut zero as *mut u64 as *mut _,
                )
            }
            .result()
            .map_err(|e| anyhow!("resetting the pool's peak: {e:?}"))?;
        }
        Ok(())
    }

    /// The current memory pool of the device, when allocations are stream-ordered.
    fn pool(&self) -> Option<sys::CUmemoryPool> {
        if !self.ctx.has_async_alloc() {
            return None;
        }
        self.ctx.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: writes one handle owned by the driver.
        unsafe { sys::cuDeviceGetMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .ok()
            .map(|_| pool)
    }
}
