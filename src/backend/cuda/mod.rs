//! The CUDA backend: bf16 storage, f32 accumulation, hand-written kernels (`kernels/*.cu`)
//! compiled at run time by NVRTC (see [`registry`]).
//!
//! Dtypes: every device tensor is bf16 (weights and activations alike, as a bf16 HF model
//! runs); `upload` rounds f32 to bf16 (nearest even) and `download` widens to f32. Inside
//! kernels everything is f32 (norms, softmax, GEMM accumulators) and rounded once on store.
//! Attention probabilities (`Pattern`) are computed and returned in f32.
//!
//! Linear layers use the engine's own tensor-core GEMM ([`Gemm::Engine`], the default),
//! cuBLAS ([`Gemm::Cublas`]), or the engine's GEMV for decode rows and cuBLAS for the rest
//! ([`Gemm::Auto`], what the command line picks).
//!
//! Work is queued on one stream; errors of a launch show up at the latest at the next
//! download or [`CudaBackend::synchronize`].

pub mod clock;
pub mod device;
pub mod ops;
pub mod registry;

pub use crate::backend::Gemm;
pub use device::{cuda_available, CudaBackend, CudaTensor, MemInfo};
pub use ops::adamw::CudaOptState;
pub use ops::attention::{attn_bwd_tensor_cores, attn_tensor_cores, AttnKernels};

use super::{AdamStep, AttnShape, Backend, ParamState, Pattern, Region, SeqSpan, TrainBackend};
use crate::backend::HostTensor;
use anyhow::{anyhow, ensure, Result};
use device::{bf16_bits, bf16_value};

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn name(&self) -> String {
        format!("{} (bf16, gemm: {})", self.device, self.gemm.name())
    }
    fn device_name(&self) -> String {
        CudaBackend::device_name(self)
    }
    fn synchronize(&self) -> Result<()> {
        CudaBackend::synchronize(self)
    }
    fn device_clock(&self) -> Result<Option<Box<dyn super::DeviceClock>>> {
        Ok(Some(Box::new(clock::CudaClock::new(self.stream.clone()))))
    }
    fn uniform(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<CudaTensor> {
        CudaBackend::uniform(self, shape, seed, scale, offset)
    }
    fn reset_peak_memory(&self) -> Result<()> {
        CudaBackend::reset_peak_memory(self)
    }
    fn peak_memory(&self) -> Result<Option<u64>> {
        CudaBackend::synchronize(self)?;
        let m = self.mem_info()?;
        Ok(Some(m.pool_used_high.unwrap_or((m.total - m.free) as u64)))
    }
    fn gemms(&self) -> &'static [Gemm] {
        &[Gemm::Cublas, Gemm::Engine]
    }
    fn linear_with_gemm(&self, x: &CudaTensor, w: &CudaTensor, gemm: Gemm) -> Result<CudaTensor> {
        self.linear_with(x, w, gemm)
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaTensor> {
        let n: usize = t.shape.iter().product();
        ensure!(
            n == t.data.len(),
            "upload: shape {:?} for {} values",
            t.shape,
            t.data.len()
        );
        let bits: Vec<u16> = t.data.iter().map(|&x| bf16_bits(x)).collect();
        Ok(CudaTensor {
            buf: self.htod(&bits)?,
            shape: t.shape.clone(),
        })
    }

    fn download(&self, t: &CudaTensor) -> Result<HostTensor> {
        let n = t.numel();
        if n == 0 {
            return Ok(HostTensor::new(t.shape.clone(), vec![]));
        }
        let bits = self
            .stream
            .clone_dtoh(&t.buf.slice(0..n))
            .map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
        // Widening is a pass over every element: parallel for big tensors.
        let data: Vec<f32> = if n >= 1 << 20 {
            use rayon::prelude::*;
            bits.par_iter().map(|&b| bf16_value(b)).collect()
        } else {
            bits.into_iter().map(bf16_value).collect()
        };
        Ok(HostTensor::new(t.shape.clone(), data))
    }

    fn shape<'a>(&self, t: &'a CudaTensor) -> &'a [usize] {
        &t.shape
    }

    fn reshape(&self, mut t: CudaTensor, shape: &[usize]) -> Result<CudaTensor> {
        crate::backend::check_reshape(&t.shape, shape)?;
        t.shape = shape.to_vec();
        Ok(t)
    }

    fn zeros(&self, shape: &[usize]) -> Result<CudaTensor> {
        let n: usize = shape.iter().product();
        let buf = self
            .stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| anyhow!("allocating {n} zeros on the GPU: {e:?}"))?;
        Ok(CudaTensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    fn embed(&self, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor> {
        ops::embed::embed(self, table, ids)
    }

    fn rmsnorm(&self, x: &CudaTensor, w: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        ops::norm::rmsnorm(self, x, w, eps)
    }

    fn linear(&self, x: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        self.linear_with(x, w, self.gemm)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        ops::elementwise::add_assign(self, x, y)
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        ops::rope::rope(self, x, head_dim, positions, inv_freq)
    }

    fn scale(&self, x: &mut CudaTensor, s: f32) -> Result<()> {
        ops::elementwise::scale(self, x, s)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(CudaTensor, Vec<Pattern>)> {
        self.attention_with(q, k, v, spans, shape, want, AttnKernels::from_env())
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        ops::swiglu::swiglu(self, gate, up)
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize]) -> Result<CudaTensor> {
        ops::rows::gather_rows(self, x, rows)
    }

    fn scatter_rows(&self, dst: &mut CudaTensor, rows: &[usize], src: &CudaTensor) -> Result<()> {
        ops::rows::scatter_rows(self, dst, rows, src)
    }

    fn write_slices(
        &self,
        x: &mut CudaTensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()> {
        ops::rows::write_slices(self, x, rows, col0, values)
    }

    fn norm_dot(
        &self,
        x: &CudaTensor,
        norm: &CudaTensor,
        eps: f32,
        w: &CudaTensor,
    ) -> Result<HostTensor> {
        ops::norm::norm_dot(self, x, norm, eps, w)
    }
}

impl TrainBackend for CudaBackend {
    fn elem_bytes(&self) -> usize {
        2 // bf16 activations
    }

    fn memory_info(&self) -> Option<(usize, usize)> {
        self.context().mem_get_info().ok()
    }

    fn copy(&self, t: &CudaTensor) -> Result<CudaTensor> {
        self.copy_tensor(t)
    }

    fn rope_bwd(
        &self,
        dx: &mut CudaTensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()> {
        ops::rope::rope_bwd(self, dx, head_dim, positions, inv_freq)
    }

    fn attention_bwd(
        &self,
        dz: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        spans: &[SeqSpan],
        shape: AttnShape,
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        self.attention_bwd_with(dz, q, k, v, spans, shape, AttnKernels::from_env())
    }

    type OptState = CudaOptState;

    fn linear_bwd_input(&self, dy: &CudaTensor, w: &CudaTensor) -> Result<CudaTensor> {
        ops::linear::linear_bwd_input(self, dy, w)
    }

    fn linear_bwd_weight(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        reg: Region,
        dw_reg: &mut CudaTensor,
    ) -> Result<()> {
        ops::linear::linear_bwd_weight(self, dy, x, reg, dw_reg)
    }

    fn rmsnorm_bwd(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        dw: Option<&mut CudaTensor>,
    ) -> Result<CudaTensor> {
        ops::norm::rmsnorm_bwd(self, dy, x, w, eps, dw)
    }

    fn swiglu_bwd(
        &self,
        dact: &CudaTensor,
        gate: &CudaTensor,
        up: &CudaTensor,
    ) -> Result<(CudaTensor, CudaTensor)> {
        ops::swiglu::swiglu_bwd(self, dact, gate, up)
    }

    fn embed_bwd(&self, dx: &CudaTensor, ids: &[u32], dtable: &mut CudaTensor) -> Result<()> {
        ops::embed::embed_bwd(self, dx, ids, dtable)
    }

    fn xent_fwd_bwd(
        &self,
        logits: &CudaTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, CudaTensor)> {
        ops::xent::xent_fwd_bwd(self, logits, targets, scale)
    }

    fn read_region(&self, t: &CudaTensor, reg: Region) -> Result<HostTensor> {
        ops::rows::read_region(self, t, reg)
    }

    fn write_region(&self, t: &mut CudaTensor, reg: Region, src: &HostTensor) -> Result<()> {
        ops::rows::write_region(self, t, reg, src)
    }

    fn opt_new(&self, master: &HostTensor) -> Result<CudaOptState> {
        ops::adamw::opt_new(self, master)
    }

    fn opt_read(&self, s: &CudaOptState) -> Result<ParamState> {
        ops::adamw::opt_read(self, s)
    }

    fn opt_write(&self, s: &mut CudaOptState, host: &ParamState) -> Result<()> {
        ops::adamw::opt_write(self, s, host)
    }

    fn sum_squares(&self, g: &CudaTensor) -> Result<f64> {
        ops::adamw::sum_squares(self, g)
    }

    fn adamw_update(
        &self,
        s: &mut CudaOptState,
        g: &CudaTensor,
        w: &mut CudaTensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        ops::adamw::adamw_update(self, s, g, w, reg, a)
    }
}
