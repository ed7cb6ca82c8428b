//! Loading and saving models: HF config and safetensors, GGUF import, tokenizer and chat
//! template, the default model.

pub mod checkpoint;
pub mod config;
pub mod digest;
pub(crate) mod driver;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod heads;
pub(crate) mod layer;
pub mod mask;
pub mod rope;
pub mod shard_index;
pub mod tokenizer;
pub mod tokenizer_file;
pub mod train;
pub mod transformer;
pub mod zoo;

pub use checkpoint::{HostTensor, LayerWeights, ModelWeights, StoreDtype};
pub use config::{model_header, ModelConfig};
