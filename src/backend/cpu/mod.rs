//! The f32 CPU backend: the oracle of the CUDA backend and the no-GPU default. Two kernel
//! sets (`select.rs`): the fast one (AVX-512 and AMX kernels where the CPU has them, the
//! `gemm` crate elsewhere) and the reference loops (`PINPOINT_CPU_KERNELS=reference`),
//! tested against each other on every machine.

pub mod buf;
pub mod gemm;
pub mod ops;
pub mod select;
pub mod simd;

use super::{AdamStep, AttnShape, Backend, ParamState, Pattern, Region, SeqSpan, TrainBackend};
use crate::backend::HostTensor;
use anyhow::Result;

#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

pub use gemm::matmul_t;

impl Backend for CpuBackend {
    type Tensor = HostTensor;

    fn name(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        let matmul = gemm::amx::describe();
        #[cfg(not(target_arch = "x86_64"))]
        let matmul = "f32";
        format!("cpu ({matmul}, {} threads)", rayon::current_num_threads())
    }
    fn device_name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn upload(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn download(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn edit_on_host(
        &self,
        t: &mut HostTensor,
        f: &mut dyn FnMut(&mut HostTensor) -> Result<bool>,
    ) -> Result<()> {
        let shape = t.shape.clone();
        f(t)?;
        anyhow::ensure!(
            t.shape == shape && t.data.len() == t.numel(),
            "a hook changed the activation's shape {shape:?} to {:?}",
            t.shape
        );
        Ok(())
    }
    fn shape<'a>(&self, t: &'a HostTensor) -> &'a [usize] {
        &t.shape
    }
    fn zeros(&self, shape: &[usize]) -> Result<HostTensor> {
        Ok(HostTensor::zeros(shape.to_vec()))
    }
    fn reshape(&self, mut t: HostTensor, shape: &[usize]) -> Result<HostTensor> {
        crate::backend::check_reshape(&t.shape, shape)?;
        t.shape = shape.to_vec();
        Ok(t)
    }

    fn embed(&self, table: &HostTensor, ids: &[u32]) -> Result<HostTensor> {
        ops::embed::embed(table, ids)
    }

    fn rmsnorm(&self, x: &HostTensor, w: &HostTensor, eps: f32) -> Result<HostTensor> {
        ops::norm::rmsnorm(x, w, eps)
    }

    fn linear(&self, x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        ops::linear::linear(x, w)
    }

    fn rope(
        &self,
        x: &mut HostTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        ops::rope::rope(x, head_dim, positions, inv_freq)
    }
    fn scale(&self, x: &mut HostTensor, s: f32) -> Result<()> {
        ops::elementwise::scale(x, s)
    }

    fn attention(
        &self,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(HostTensor, Vec<Pattern>)> {
        ops::attention::attention(q, k, v, spans, shape, want)
    }

    fn swiglu(&self, gate: &HostTensor, up: &HostTensor) -> Result<HostTensor> {
        ops::swiglu::swiglu(gate, up)
    }

    fn gather_rows(&self, x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
        ops::rows::gather_rows(x, rows)
    }

    fn scatter_rows(&self, dst: &mut HostTensor, rows: &[usize], src: &HostTensor) -> Result<()> {
        ops::rows::scatter_rows(dst, rows, src)
    }

    fn write_slices(
        &self,
        x: &mut HostTensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()> {
        ops::rows::write_slices(x, rows, col0, values)
    }

    fn add_assign(&self, x: &mut HostTensor, y: &HostTensor) -> Result<()> {
        ops::elementwise::add_assign(x, y)
    }

    fn norm_dot(
        &self,
        x: &HostTensor,
        norm: &HostTensor,
        eps: f32,
        w: &HostTensor,
    ) -> Result<HostTensor> {
        ops::norm::norm_dot(x, norm, eps, w)
    }
}

impl TrainBackend for CpuBackend {
    fn copy(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }

    fn linear_bwd_input(&self, dy: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        self.linear_bwd_input_sum(&[(dy, w)])
    }

    fn xent_fwd_bwd(
        &self,
        logits: &HostTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, HostTensor)> {
        self.xent_fwd_bwd_owned(logits.clone(), targets, scale)
    }

    fn linear_bwd_input_sum(&self, parts: &[(&HostTensor, &HostTensor)]) -> Result<HostTensor> {
        ops::linear::linear_bwd_input_sum(parts)
    }

    fn linear_bwd_weight(
        &self,
        dy: &HostTensor,
        x: &HostTensor,
        reg: Region,
        dw_reg: &mut HostTensor,
    ) -> Result<()> {
        ops::linear::linear_bwd_weight(dy, x, reg, dw_reg)
    }

    fn rmsnorm_bwd(
        &self,
        dy: &HostTensor,
        x: &HostTensor,
        w: &HostTensor,
        eps: f32,
        dw: Option<&mut HostTensor>,
    ) -> Result<HostTensor> {
        ops::norm::rmsnorm_bwd(dy, x, w, eps, dw)
    }

    fn rope_bwd(
        &self,
        dx: &mut HostTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        ops::rope::rope_bwd(dx, head_dim, positions, inv_freq)
    }

    fn attention_bwd(
        &self,
        dz: &HostTensor,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
    ) -> Result<(HostTensor, HostTensor, HostTensor)> {
        ops::attention::attention_bwd(dz, q, k, v, spans, shape)
    }

    fn swiglu_bwd(
        &self,
        dact: &HostTensor,
        gate: &HostTensor,
        up: &HostTensor,
    ) -> Result<(HostTensor, HostTensor)> {
        ops::swiglu::swiglu_bwd(dact, gate, up)
    }

    fn embed_bwd(&self, dx: &HostTensor, ids: &[u32], dtable: &mut HostTensor) -> Result<()> {
        ops::embed::embed_bwd(dx, ids, dtable)
    }

    /// In place: each row of logits becomes its row of dlogits (no 200 MB allocation,
    /// zero-fill and copy for a SmolLM2 batch).
    fn xent_fwd_bwd_owned(
        &self,
        logits: HostTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, HostTensor)> {
        ops::xent::xent_fwd_bwd_owned(logits, targets, scale)
    }

    fn read_region(&self, t: &HostTensor, reg: Region) -> Result<HostTensor> {
        ops::rows::read_region(t, reg)
    }

    fn write_region(&self, t: &mut HostTensor, reg: Region, src: &HostTensor) -> Result<()> {
        ops::rows::write_region(t, reg, src)
    }

    type OptState = ParamState;

    fn opt_new(&self, master: &HostTensor) -> Result<ParamState> {
        Ok(ParamState::new(master.data.clone()))
    }

    fn opt_read(&self, s: &ParamState) -> Result<ParamState> {
        Ok(s.clone())
    }

    fn opt_write(&self, s: &mut ParamState, host: &ParamState) -> Result<()> {
        ops::adamw::opt_write(s, host)
    }

    fn sum_squares(&self, g: &HostTensor) -> Result<f64> {
        ops::adamw::sum_squares(g)
    }

    fn adamw_update(
        &self,
        s: &mut ParamState,
        g: &HostTensor,
        w: &mut HostTensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        ops::adamw::adamw_update(s, g, w, reg, a)
    }
}
