//! pinpoint: find the attention heads that make a Llama/Mistral chat model sycophantic,
//! validate them, and fine-tune only those heads (supervised pinpoint tuning).

pub mod model;
pub mod util;
