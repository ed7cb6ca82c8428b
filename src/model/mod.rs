//! Loading and saving models: HF config and safetensors, GGUF import, tokenizer and chat
//! template, the default model.

pub mod checkpoint;
pub mod config;
pub mod gguf;
pub mod tokenizer;
pub mod zoo;

pub use checkpoint::{HostTensor, LayerWeights, ModelWeights, StoreDtype};
pub use config::ModelConfig;
