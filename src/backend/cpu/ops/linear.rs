//! `y = x @ w^T` on the CPU and its backward (input and weight-region gradients).

use crate::backend::cpu::gemm::{gemm_into, matmul_t, Strided};
use crate::backend::HostTensor;
use crate::backend::{dims2, Region};
use anyhow::{bail, ensure, Result};

pub(crate) fn linear(x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
    let (n, k) = dims2(&x.shape)?;
    let (m, k2) = dims2(&w.shape)?;
    ensure!(
        k == k2,
        "linear: input has {k} columns, weight expects {k2}"
    );
    Ok(HostTensor::new(
        vec![n, m],
        matmul_t(&x.data, &w.data, n, k, m),
    ))
}

pub(crate) fn linear_bwd_input_sum(parts: &[(&HostTensor, &HostTensor)]) -> Result<HostTensor> {
    let Some(&(dy0, w0)) = parts.first() else {
        bail!("linear_bwd_input_sum: no parts");
    };
    let (n, _) = dims2(&dy0.shape)?;
    let (_, k) = dims2(&w0.shape)?;
    // Part i: dy_i [n, m_i] (row-major) @ w_i [m_i, k] (row-major).
    let mut views = Vec::with_capacity(parts.len());
    for (i, &(dy, w)) in parts.iter().enumerate() {
        let (n2, m) = dims2(&dy.shape)?;
        let (m2, k2) = dims2(&w.shape)?;
        ensure!(
            m == m2 && n2 == n && k2 == k,
            "linear_bwd_input: part {i}: dy [{n2}, {m}] and weight [{m2}, {k2}] do not \
             make [{n}, {k}]"
        );
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
    if n >= 16 && std::arch::is_x86_feature_detected!("avx512f") {
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
    let (n, m) = dims2(&dy.shape)?;
    let (n2, k) = dims2(&x.shape)?;
    ensure!(n == n2, "linear_bwd_weight: dy has {n} rows, x has {n2}");
    reg.check(&[m, k])?;
    let want = reg.shape(&[m, k]);
    ensure!(
        dw_reg.numel() == want.iter().product::<usize>(),
        "linear_bwd_weight: grad buffer {:?} for region {reg:?} of [{m}, {k}]",
        dw_reg.shape
    );
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
