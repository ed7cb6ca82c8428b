//! The CUDA backend's [`DeviceClock`]: timing events recorded on the backend's stream (read
//! once, at the end, so the profiler does not serialise the stream) and NVTX ranges where
//! the NVTX library is present (`libnvToolsExt.so.1`, loaded at run time like the driver;
//! absent: no ranges, and the profile is unchanged).

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

impl Nvtx {
    fn load() -> Option<Self> {
        // SAFETY: loading a library runs its initialisers; NVTX's are side-effect free
        // unless a tool (Nsight) injects itself, which is the point.
        let lib = unsafe { libloading::Library::new("libnvToolsExt.so.1") }.ok()?;
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
