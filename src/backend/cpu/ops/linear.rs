//! `y = x @ w^T` on the CPU and its backward (input and weight-region gradients).

use crate::backend::cpu::gemm::{gemm_into, matmul_t, Strided};
use crate::backend::{shapes, HostTensor, Region};
use anyhow::Result;

pub(crate) fn linear(x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
    let (n, k, m) = shapes::linear(&x.shape, &w.shape)?;
    Ok(HostTensor::new(
        vec![n, m],
        matmul_t(&x.data, &w.data, n, k, m),
    ))
}

pub(crate) fn linear_bwd_input_sum(parts: &[(&HostTensor, &HostTensor)]) -> Result<HostTensor> {
    let shapes: Vec<(&[usize], &[usize])> = parts
        .iter()
        .map(|(dy, w)| (&dy.shape[..], &w.shape[..]))
        .collect();
    let (n, k) = shapes::linear_bwd_input(&shapes)?;
    // Part i: dy_i [n, m_i] (row-major) @ w_i [m_i, k] (row-major).
    let mut views = Vec::with_capacity(parts.len());
    for &(dy, w) in parts {
        let m = dy.shape[1];
        let dy_view = Strided {
            data: &dy.data,
            off: 0,
            rs: m,
            cs: 1,
        };
        let w_view = Strided {
            data: &w.data,
            off: 0,
            rs: k,
            cs: 1,
        };
        views.push((dy_view, w_view, m));
    }
    // dx [n, k] = sum_i dy_i @ w_i
    #[cfg(target_arch = "x86_64")]
    if n >= 16 && crate::backend::cpu::select::avx512() {
        use crate::backend::cpu::gemm::{gemm_packed_sum_new, GemmPart};
        let gemm_parts: Vec<GemmPart> = views
            .iter()
            .map(|&(a, b, m)| GemmPart { a, b, k: m })
            .collect();
        // SAFETY: avx512f detected; operand bounds are checked inside.
        let dx = unsafe { gemm_packed_sum_new(n, k, &gemm_parts) };
        return Ok(HostTensor::new(vec![n, k], dx));
    }
    let mut dx = vec![0.0f32; n * k];
    for (i, &(lhs, rhs, m)) in views.iter().enumerate() {
        gemm_into(&mut dx, i > 0, n, k, m, lhs, rhs);
    }
    Ok(HostTensor::new(vec![n, k], dx))
}

pub(crate) fn linear_bwd_weight(
    dy: &HostTensor,
    x: &HostTensor,
    reg: Region,
    dw_reg: &mut HostTensor,
) -> Result<()> {
    let (n, m, k) = shapes::linear_bwd_weight(&dy.shape, &x.shape, reg, dw_reg.numel())?;
    match reg {
        Region::Full | Region::Rows { .. } => {
            let (r0, len) = match reg {
                Region::Rows { start, len } => (start, len),
                _ => (0, m),
            };
            // dw[len, k] += dy[:, r0..r0+len]^T [len, n] @ x [n, k]
            let lhs = Strided {
                data: &dy.data,
                off: r0,
                rs: 1,
                cs: m,
            };
            let rhs = Strided {
                data: &x.data,
                off: 0,
                rs: k,
                cs: 1,
            };
            gemm_into(&mut dw_reg.data, true, len, k, n, lhs, rhs);
        }
        Region::Cols { start, len } => {
            // dw[m, len] += dy^T [m, n] @ x[:, start..start+len] [n, len]
            let lhs = Strided {
                data: &dy.data,
                off: 0,
                rs: 1,
                cs: m,
            };
            let rhs = Strided {
                data: &x.data,
                off: start,
                rs: k,
                cs: 1,
            };
            gemm_into(&mut dw_reg.data, true, m, len, n, lhs, rhs);
        }
    }
    Ok(())
}
