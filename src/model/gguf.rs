//! (placeholder until the gguf branch lands)
use anyhow::{bail, Result};
use std::path::Path;
pub fn import_gguf(_gguf: &Path, _out: &Path, _progress: bool) -> Result<()> {
    bail!("todo")
}
