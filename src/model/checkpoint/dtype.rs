//! The dtypes a checkpoint's tensors are stored in, and the check that a tensor fits the
//! dtype it is saved in.

use anyhow::{bail, Result};
use half::f16;
use safetensors::Dtype;

/// Storage dtype of a tensor in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StoreDtype {
    F32,
    F16,
    BF16,
}

impl StoreDtype {
    pub fn from_torch_name(s: &str) -> Self {
        match s {
            "bfloat16" => Self::BF16,
            "float16" => Self::F16,
            _ => Self::F32,
        }
    }
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }
    pub(super) fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }
}

/// The checkpoint dtype of a safetensors dtype pinpoint reads (None for any other).
pub(super) fn store_dtype_of(d: Dtype) -> Option<StoreDtype> {
    match d {
        Dtype::F32 => Some(StoreDtype::F32),
        Dtype::F16 => Some(StoreDtype::F16),
        Dtype::BF16 => Some(StoreDtype::BF16),
        _ => None,
    }
}

/// Error unless every finite value of tensor `name` stays finite in `dtype` (f16 tops out
/// at 65504; bf16 and f32 hold every finite f32).
pub(super) fn fits_dtype(name: &str, data: &[f32], dtype: StoreDtype) -> Result<()> {
    if dtype != StoreDtype::F16 {
        return Ok(());
    }
    let too_big = |x: &f32| x.is_finite() && f16::from_f32(*x).is_infinite();
    if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| too_big(x)) {
        let n = data.iter().filter(|x| too_big(x)).count();
        bail!(
            "tensor {name}: {n} values do not fit float16 (first: {x} at index {i}; float16 holds at most 65504) and would be saved as inf; save as bf16 or f32 (--save-dtype)"
        );
    }
    Ok(())
}
