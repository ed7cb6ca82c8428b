//! pinpoint: find the attention heads that make a Llama/Mistral chat model sycophantic,
//! validate them, and fine-tune only those heads (supervised pinpoint tuning).

pub mod backend;
pub mod backward;
pub mod diagnose;
pub mod eval;
pub mod generate;
pub mod guard;
pub mod heads;
pub mod model;
pub mod pipeline;
pub mod transformer;
pub mod tune;
pub mod util;

pub use heads::{HeadId, HookPoint, Positions, Taps};
pub use transformer::Model;
