//! pinpoint: find the attention heads that make a Llama/Mistral chat model sycophantic,
//! validate them, and fine-tune only those heads (supervised pinpoint tuning).

// The CLI's code is written against the crate's public name; it lives in the library so
// that the Python package runs the very same commands (`cli::run`).
extern crate self as pinpoint;

pub mod backend;
pub mod cli;
pub mod diagnose;
pub mod eval;
pub mod guard;
pub mod model;
pub mod pipeline;
pub mod profile;
pub mod tune;
pub mod util;

// The decoder, its training, hooks and generation live in `model/`; these paths stay as
// short names for the rest of the crate and for users.
/// The old name of [`train`] (it holds the training forward and forward-only passes too,
/// not only the backward); kept so existing `pinpoint::train::...` paths still build.
pub use model::train as backward;
pub use model::{generate, heads, train, transformer};

pub use heads::{HeadId, HookPoint, Positions, Taps};
pub use transformer::Model;

impl Model<backend::cpu::CpuBackend> {
    /// Load a HF model directory onto the CPU backend. (Here, at the top of the crate, so
    /// that the model code itself sees only the backend traits.)
    pub fn load_cpu(dir: &std::path::Path) -> anyhow::Result<Self> {
        Model::load_on(dir, backend::cpu::CpuBackend)
    }
}
