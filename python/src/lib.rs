//! `pinpoint._pinpoint`: the engine seen from Python. This layer takes and returns plain
//! lists, strings and numpy arrays; `python/pinpoint/__init__.py` gives them
//! TransformerLens' shapes and names. Long calls run with the GIL released on a worker
//! thread while this thread polls for Ctrl-C and progress (`blocking`).

mod analyses;
mod blocking;
mod engine;
mod forward;

use pyo3::prelude::*;

#[pymodule]
fn _pinpoint(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_function(wrap_pyfunction!(forward::activation_copies, m)?)?;
    m.add_function(wrap_pyfunction!(forward::forward, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::diagnose, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::knockout, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::attention_share, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::tune, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::pipeline, m)?)?;
    m.add_function(wrap_pyfunction!(analyses::hook_names, m)?)?;
    Ok(())
}
