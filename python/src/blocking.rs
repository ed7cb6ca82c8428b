//! Running engine calls from Python: the GIL released, the work on a worker thread, this
//! (the interpreter's) thread polling every 50 ms for Ctrl-C (which raises the engine's
//! cancellation flag, so the worker stops at its next layer or step and writes nothing
//! more) and for progress (handed to a Python callback that draws tqdm). Engine errors
//! become Python exceptions carrying the CLI's message.

use pinpoint::util::{cancel, progress};
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use std::time::Duration;

/// An engine error as a Python exception: a Python error raised inside a hook comes back
/// as itself; a cancellation as `KeyboardInterrupt`; a missing file as
/// `FileNotFoundError`; other I/O as `OSError`; anything else as `ValueError` (the
/// engine's errors are about its inputs). The message is the CLI's (`{err:#}`).
pub fn to_py(py: Python<'_>, err: anyhow::Error) -> PyErr {
    if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<PyErr>()) {
        return e.clone_ref(py);
    }
    let msg = format!("{err:#}");
    if cancel::is_cancelled(&err) {
        return PyKeyboardInterrupt::new_err(msg);
    }
    let io = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>());
    match io.map(|e| e.kind()) {
        Some(std::io::ErrorKind::NotFound) => PyFileNotFoundError::new_err(msg),
        Some(_) => PyOSError::new_err(msg),
        None => PyValueError::new_err(msg),
    }
}

/// Run `f` with the GIL released (see the module doc). `on_progress(message, position,
/// length)` is called (with the GIL) when the engine's progress changes.
pub fn run<T: Send>(
    py: Python<'_>,
    on_progress: Option<&PyObject>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> PyResult<T> {
    cancel::reset();
    progress::observe(on_progress.is_some());
    let mut interrupt: Option<PyErr> = None;
    let mut progress_err: Option<PyErr> = None;
    let joined = py.allow_threads(|| {
        std::thread::scope(|s| {
            let worker = s.spawn(f);
            let mut last: Option<(String, u64, u64)> = None;
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
                Python::with_gil(|py| {
                    if interrupt.is_none() {
                        if let Err(e) = py.check_signals() {
                            cancel::request();
                            interrupt = Some(e);
                        }
                    }
                    poll_progress(py, on_progress, &mut last, &mut progress_err);
                });
            }
            Python::with_gil(|py| poll_progress(py, on_progress, &mut last, &mut progress_err));
            worker.join()
        })
    });
    progress::observe(false);
    cancel::reset();
    if let Some(e) = interrupt {
        return Err(e);
    }
    let out = match joined {
        Ok(r) => r.map_err(|e| to_py(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(PyRuntimeError::new_err(format!(
                "the engine failed unexpectedly (a bug; please report it): {what}"
            )))
        }
    };
    match (out, progress_err) {
        (Ok(_), Some(e)) => Err(e),
        (out, _) => out,
    }
}

fn poll_progress(
    py: Python<'_>,
    cb: Option<&PyObject>,
    last: &mut Option<(String, u64, u64)>,
    err: &mut Option<PyErr>,
) {
    let (Some(cb), None) = (cb, err.as_ref()) else {
        return;
    };
    let now = progress::current();
    if now.is_some() && now != *last {
        if let Some((msg, pos, len)) = &now {
            if let Err(e) = cb.call1(py, (msg.as_str(), *pos, *len)) {
                *err = Some(e);
            }
        }
        *last = now;
    }
}
