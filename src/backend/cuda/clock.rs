//! The CUDA backend's [`DeviceClock`]: timing events recorded on the backend's stream (read
//! once, at the end, so the profiler does not serialise the stream) and NVTX ranges where
//! an NVTX library can be loaded at run time, like the driver: `$PINPOINT_NVTX` (a path),
//! else `libnvToolsExt.so.1` (CUDA 12 and older), else `libnvtx3interop.so.1` (CUDA 13's
//! shim of the same C API, also in the `nvidia-nvtx` wheel). Both forward to the tool that
//! injects itself (Nsight Systems / Compute). None found: no ranges, the profile unchanged.

use crate::backend::DeviceClock;
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream};
use std::ffi::CString;
use std::sync::{Arc, Mutex};

type RangePush = unsafe extern "C" fn(*const std::ffi::c_char) -> i32;
type RangePop = unsafe extern "C" fn() -> i32;

/// NVTX's push/pop, resolved from the library.
struct Nvtx {
    push: RangePush,
    pop: RangePop,
    _lib: libloading::Library,
}

/// Where [`Nvtx::load`] looks, in order.
pub fn nvtx_candidates() -> Vec<String> {
    let mut v: Vec<String> = std::env::var("PINPOINT_NVTX").ok().into_iter().collect();
    v.extend(["libnvToolsExt.so.1".into(), "libnvtx3interop.so.1".into()]);
    v
}

impl Nvtx {
    fn load() -> Option<Self> {
        nvtx_candidates()
            .iter()
            .find_map(|name| Self::load_from(name))
    }

    fn load_from(name: &str) -> Option<Self> {
        // SAFETY: loading a library runs its initialisers; NVTX's are side-effect free
        // unless a tool (Nsight) injects itself, which is the point.
        let lib = unsafe { libloading::Library::new(name) }.ok()?;
        // SAFETY: the symbols have these C signatures in every NVTX v2/v3 library.
        unsafe {
            let push = *lib.get::<RangePush>(b"nvtxRangePushA\0").ok()?;
            let pop = *lib.get::<RangePop>(b"nvtxRangePop\0").ok()?;
            Some(Self {
                push,
                pop,
                _lib: lib,
            })
        }
    }
}

/// Timing events on one stream, in the order they were recorded.
pub struct CudaClock {
    stream: Arc<CudaStream>,
    events: Mutex<Vec<CudaEvent>>,
    nvtx: Option<Nvtx>,
}

impl CudaClock {
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Self {
            stream,
            events: Mutex::new(vec![]),
            nvtx: Nvtx::load(),
        }
    }
}

impl DeviceClock for CudaClock {
    fn mark(&self) -> Result<usize> {
        let e = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| anyhow!("recording a CUDA timing event: {e:?}"))?;
        let mut v = self.events.lock().unwrap_or_else(|e| e.into_inner());
        v.push(e);
        Ok(v.len() - 1)
    }

    fn resolve(&self) -> Result<Vec<f64>> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA error before reading the timing events: {e:?}"))?;
        let v = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(!v.is_empty(), "no CUDA timing event was recorded");
        v.iter()
            .map(|e| {
                v[0].elapsed_ms(e)
                    .map(|ms| ms as f64 / 1e3)
                    .map_err(|err| anyhow!("reading a CUDA timing event: {err:?}"))
            })
            .collect()
    }

    fn range_push(&self, name: &str) {
        if let (Some(n), Ok(c)) = (&self.nvtx, CString::new(name)) {
            // SAFETY: a NUL-terminated string that outlives the call (NVTX copies it).
            unsafe {
                (n.push)(c.as_ptr());
            }
        }
    }

    fn range_pop(&self) {
        if let Some(n) = &self.nvtx {
            // SAFETY: pops the range pushed by `range_push` (the wrapper pairs them).
            unsafe {
                (n.pop)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs an NVTX library: run with `PINPOINT_NVTX=/path/to/libnvtx3interop.so.1` (in
    /// the `nvidia-nvtx` wheel) or where the CUDA toolkit's is on the library path.
    #[test]
    #[ignore = "needs an NVTX library (PINPOINT_NVTX or the CUDA toolkit)"]
    fn nvtx_ranges_push_and_pop() {
        let n = Nvtx::load().expect("an NVTX library from nvtx_candidates()");
        let name = CString::new("pinpoint test range").unwrap();
        // SAFETY: a NUL-terminated string; push and pop paired.
        let (depth, after) = unsafe { ((n.push)(name.as_ptr()), (n.pop)()) };
        // Without a tool attached NVTX returns a negative "no tool" code; with one, the
        // depth (0 for a first range). Either way both calls returned.
        assert!(depth <= 0 && after <= 0, "push {depth}, pop {after}");
    }
}
