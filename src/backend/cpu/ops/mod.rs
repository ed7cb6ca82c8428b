//! The CPU backend's ops, one file per op, forward and backward side by side (the same
//! names as `backend/cuda/ops/` and `kernels/`).

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod linear;
pub mod norm;
pub mod rope;
pub mod rows;
pub mod swiglu;
pub mod xent;
