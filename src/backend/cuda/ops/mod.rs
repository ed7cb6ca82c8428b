//! The CUDA backend's launchers, one file per op, forward and backward side by side (the
//! same names as `backend/cpu/ops/` and `kernels/`).
//!
//! Backward ops work on bf16 device tensors (f32 math inside the kernels, one rounding on
//! store), weight-gradient GEMMs by cuBLAS. Conventions as the trait: param grads `+=`
//! (read, add in f32, round once), activation grads `=` (fresh tensors). Sums that several
//! threads would race on are done without atomics: one owner per output element (embedding
//! rows grouped on the host, dK/dV key-major, the norm weight column-major).

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod linear;
pub mod norm;
pub mod rope;
pub mod rows;
pub mod sample;
pub mod swiglu;
pub mod xent;
