//! SwiGLU on the CPU: `silu(gate) * up` and its backward.

use crate::backend::cpu::buf::ELEMS_PER_TASK;
use crate::backend::cpu::buf::{par_new, par_new2};
use crate::backend::cpu::simd;
use crate::backend::shapes;
use crate::backend::HostTensor;
use anyhow::Result;

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub(crate) fn swiglu(gate: &HostTensor, up: &HostTensor) -> Result<HostTensor> {
    shapes::same_shape("swiglu", &gate.shape, &up.shape)?;
    let data = par_new(gate.data.len(), ELEMS_PER_TASK, |c, o| {
        let at = c * ELEMS_PER_TASK;
        let (g, u) = (&gate.data[at..][..o.len()], &up.data[at..][..o.len()]);
        simd::silu_mul(g, u, o)
    });
    Ok(HostTensor::new(gate.shape.clone(), data))
}

pub(crate) fn swiglu_bwd(
    dact: &HostTensor,
    gate: &HostTensor,
    up: &HostTensor,
) -> Result<(HostTensor, HostTensor)> {
    shapes::swiglu_bwd(&dact.shape, &gate.shape, &up.shape)?;
    // act = g * sigmoid(g) * u;  dact/dg = u * s * (1 + g (1 - s)), dact/du = silu(g).
    const CHUNK: usize = 1 << 15;
    let len = gate.data.len();
    let (dg, du) = par_new2(len, CHUNK, |c, dg, du| {
        let at = c * CHUNK;
        let n = dg.len();
        let (d, g, u) = (
            &dact.data[at..][..n],
            &gate.data[at..][..n],
            &up.data[at..][..n],
        );
        simd::silu_mul_bwd(d, g, u, dg, du)
    });
    Ok((
        HostTensor::new(gate.shape.clone(), dg),
        HostTensor::new(gate.shape.clone(), du),
    ))
}
