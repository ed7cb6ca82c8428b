//! Benchmark helpers of the CUDA backend (kept apart from the backend proper): random
//! tensors generated on the device (`kernels/init.cu`), device copies for a bandwidth
//! yardstick, and memory figures (free/total, and the stream-ordered pool's high-water
//! mark, the peak of what cudarc's `cuMemAllocAsync` allocations held).

use super::{elem_cfg, registry, CudaBackend, CudaTensor};
use anyhow::{anyhow, Context, Result};
use cudarc::driver::{sys, PushKernelArg};

pub use crate::backend::uniform_host;

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
            .map_err(|e| anyhow!("device-to-device copy: {e:?}"))?;
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
