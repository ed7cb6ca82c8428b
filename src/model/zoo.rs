//! (placeholder until the gguf branch lands)
use anyhow::{bail, Result};
use std::path::PathBuf;
pub fn default_model_dir(_progress: bool) -> Result<PathBuf> {
    bail!("todo")
}
