//! The layer-level compute interface. Model math (`transformer.rs`) is written once against
//! [`Backend`]; the CPU backend (f32, the oracle) and a CUDA backend implement it.
//!
//! Activations are row-major 2-D tensors `[rows, cols]` where a row is one token of the
//! packed batch (sequences concatenated, no padding). Per-head tensors keep heads
//! contiguous inside a row: `[rows, heads * head_dim]`, i.e. `[batch, pos, head, head_dim]`
//! when the sequences are of equal length (TransformerLens' `hook_z` layout).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub use host::norm_dot as norm_dot_host;
mod clock;
pub mod shapes;
mod span;

pub use clock::DeviceClock;
pub use span::Span;

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// A dense row-major f32 tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// One sequence's place in an attention call.
///
/// Query row `q_start + i` (i < q_len) has absolute position `pos0 + i` and attends to
/// the keys of positions `j <= pos0 + i` (and `pos0 + i - j < window`). The key/value row of
/// position j is `kv_start + j`, except that with `kv_new = Some(s)` the positions
/// `j >= pos0` (this call's own tokens) live at rows `s + (j - pos0)`: a shared prefix in
/// one place, each continuation's new keys in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_start: usize,
    pub pos0: usize,
    pub kv_new: Option<usize>,
}

impl SeqSpan {
    /// Row of the key/value of absolute position `j`.
    #[inline]
    pub fn kv_row(&self, j: usize) -> usize {
        match self.kv_new {
            Some(s) if j >= self.pos0 => s + (j - self.pos0),
            _ => self.kv_start + j,
        }
    }
    /// Check the span against `q_rows` query rows and `kv_rows` key/value rows.
    pub fn check(&self, q_rows: usize, kv_rows: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.q_start + self.q_len <= q_rows,
            "attention: span {self:?} runs past {q_rows} query rows"
        );
        anyhow::ensure!(
            self.kv_end() <= kv_rows,
            "attention: span {self:?} runs past {kv_rows} key rows"
        );
        Ok(())
    }

    /// Largest key/value row this span reads, plus one.
    pub fn kv_end(&self) -> usize {
        let last = self.pos0 + self.q_len - 1;
        match self.kv_new {
            Some(s) => (s + self.q_len).max(if self.pos0 > 0 {
                self.kv_start + self.pos0
            } else {
                0
            }),
            None => self.kv_start + last + 1,
        }
    }
}

/// Shape facts of an attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Mistral's sliding window: key j is visible from query i iff 0 <= i - j < window.
    pub window: Option<usize>,
}

/// Attention probabilities of one head of one sequence: `[q_len, kv_len]` where
/// `kv_len = pos0 + q_len` (masked entries are 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub seq: usize,
    pub head: usize,
    pub probs: HostTensor,
}

/// `(rows, cols)` of a 2-D shape; a 1-D shape `[c]` is one row. The one shape check of
/// every backend's row-wise ops.
pub fn dims2(shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [r, c] => Ok((*r, *c)),
        [c] => Ok((1, *c)),
        s => bail!("expected a 2-D tensor, got shape {s:?}"),
    }
}

/// A reshape keeps the elements: `to` holds as many as `from`. The one check of every
/// backend's `reshape`.
pub fn check_reshape(from: &[usize], to: &[usize]) -> Result<()> {
    let (a, b) = (from.iter().product::<usize>(), to.iter().product::<usize>());
    ensure!(
        a == b && !to.is_empty(),
        "reshape of {from:?} ({a} elements) to {to:?} ({b} elements)"
    );
    Ok(())
}

/// Plain RoPE's inverse frequencies as HF computes them (f32): `1 / theta^(2i/D)`. The
/// variants start from these (`model::rope`, the one place a model's table is made).
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (theta as f32).powf(e)
        })
        .collect()
}

/// Which GEMM `linear` uses, on a backend that has several (the CUDA backend; the CPU
/// backend has one and lists none in [`Backend::gemms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gemm {
    /// The engine's kernels: `gemm_bf16_tn` (tensor cores, cp.async double buffering), and
    /// `gemv_bf16_tn` for at most 8 rows (decode).
    #[default]
    Engine,
    /// cuBLAS `cublasGemmEx` (bf16 in/out, f32 compute).
    Cublas,
    /// The engine's GEMV for at most 2 rows (single-sequence decode), cuBLAS otherwise:
    /// measured on an H100, the engine's GEMM reaches ~125 TFLOP/s and cuBLAS 550-740 at
    /// prefill and training shapes, while the GEMV decodes SmolLM2 in 3.7 ms/step vs 6.8.
    Auto,
}

impl Gemm {
    /// Its name in benchmark rows.
    pub fn name(self) -> &'static str {
        match self {
            Gemm::Engine => "engine",
            Gemm::Cublas => "cublas",
            Gemm::Auto => "auto",
        }
    }
}

/// Deterministic uniform values, the host reference of `kernels/init.cu`'s `init_uniform`
/// (random weights in a model's shape, for benchmarks): a tensor of `len` elements filled with (`seed`,
/// `scale`, `offset`), rounded to bf16 as the device stores it. u (24 bits) and `2u - 1`
/// are exact in f32; `offset + scale * v` may be fused into one fma on the device, so the
/// bits agree exactly when `offset == 0` or `scale == 0` (the only uses here) and to one
/// f32 rounding otherwise.
pub fn uniform_host(len: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let u = ((z >> 40) as u32) as f32 * (1.0 / 16_777_216.0);
            half::bf16::from_f32(offset + scale * (2.0 * u - 1.0)).to_f32()
        })
        .collect()
}

/// Layer-level operations. `Tensor` is a device buffer of a 2-D shape.
pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;

    fn name(&self) -> String;
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<HostTensor>;
    /// Let `f` read `t` on the host and edit it; `f` returns whether it edited. Default:
    /// download, then upload when edited; the CPU backend edits in place (no copy).
    fn edit_on_host(
        &self,
        t: &mut Self::Tensor,
        f: &mut dyn FnMut(&mut HostTensor) -> Result<bool>,
    ) -> Result<()> {
        let mut h = self.download(t)?;
        if f(&mut h)? {
            *t = self.upload(&h)?;
        }
        Ok(())
    }
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor>;
    /// The same elements (row-major) viewed as `shape`, without a copy: `[n, H*D]` as
    /// `[n*H, D]` for a per-head norm. Errors when the element counts differ.
    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;

    /// The device in words, for reports: `cpu (N threads)`, the GPU's name.
    fn device_name(&self) -> String {
        self.name()
    }
    /// Wait for queued work (nothing to wait for where calls are synchronous).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// A tensor of [`uniform_host`] values (`offset +- scale`, bf16-rounded), the same values
    /// on every backend; a device may make them itself.
    fn uniform(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Self::Tensor> {
        let n = shape.iter().product();
        self.upload(&HostTensor::new(
            shape.to_vec(),
            uniform_host(n, seed, scale, offset),
        ))
    }
    /// Start a new peak of device memory in use.
    fn reset_peak_memory(&self) -> Result<()> {
        Ok(())
    }
    /// Peak bytes of device memory in use since [`Backend::reset_peak_memory`] (None: not
    /// measured).
    fn peak_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// The GEMMs `linear_with_gemm` can run, the first the fastest at large shapes (none: one
    /// GEMM, `linear`'s).
    fn gemms(&self) -> &'static [Gemm] {
        &[]
    }
    /// Profiling (`crate::profile`): a span (a phase, a layer) begins; ops called until the
    /// matching [`Backend::span_exit`] belong to it. A no-op on every backend but the
    /// profiling wrapper, so model code may mark spans at no cost.
    #[inline]
    fn span_enter(&self, kind: &'static str, index: Option<usize>) {
        let _ = (kind, index);
    }
    /// The innermost open span ends.
    #[inline]
    fn span_exit(&self) {}
    /// A clock on the device's queue, for backends whose calls return before the work is
    /// done (CUDA); None where every call runs to completion on the calling thread, so the
    /// host's monotonic clock times it.
    fn device_clock(&self) -> Result<Option<Box<dyn DeviceClock>>> {
        Ok(None)
    }
    /// [`Backend::linear`] with GEMM `gemm` (one of [`Backend::gemms`]).
    fn linear_with_gemm(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        gemm: Gemm,
    ) -> Result<Self::Tensor> {
        let _ = gemm;
        self.linear(x, w)
    }

    /// `table[ids[i]]` for each i: `[ids.len(), d]`.
    fn embed(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// RMSNorm over the last dim, then scale by `w` `[d]`.
    fn rmsnorm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// `x [n, k] @ w [m, k]^T -> [n, m]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x += y`, same shape.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Rotate-half RoPE in place on `x [n, heads * head_dim]`, row i at `positions[i]`, with
    /// the inverse frequencies `inv_freq [head_dim / 2]` (the model computes them for its RoPE
    /// variant: `model::rope`; plain RoPE is [`rope_inv_freq`]).
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()>;
    /// Causal grouped-query attention. `q [n, H*D]`, `k`,`v` `[rows, G*D]`.
    /// Returns `z [n, H*D]` and the probabilities of `(seq, head)` pairs in `want`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(Self::Tensor, Vec<Pattern>)>;
    /// `silu(gate) * up`, same shape.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rows `rows` of `x`: `[rows.len(), cols]`.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// `dst[rows[i]] = src[i]` for each i.
    fn scatter_rows(
        &self,
        dst: &mut Self::Tensor,
        rows: &[usize],
        src: &Self::Tensor,
    ) -> Result<()>;
    /// Overwrite `x[rows[i], col0[i] .. col0[i] + width]` with `values[i]` (`values [n, width]`).
    fn write_slices(
        &self,
        x: &mut Self::Tensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()>;

    /// `rmsnorm(x) * norm` of rows `x [n, d]`, times `w [m, d]^T` (m small: label rows of
    /// lm_head), with nothing rounded on the way (the normalized rows and the outputs
    /// stay f32 or better): `[n, m]` on the host. Path patching scores small differences
    /// of large label logits, which a bf16 output would round to 1/16.
    fn norm_dot(
        &self,
        x: &Self::Tensor,
        norm: &Self::Tensor,
        eps: f32,
        w: &Self::Tensor,
    ) -> Result<HostTensor>;
}

// ---- Training: the backward of every op above, and the optimizer.
//
// Convention (llm.c): "param grads +=" (weight gradients accumulate into buffers the caller
// owns, so micro-batches add up), "activation grads =" (activation gradients are returned
// as fresh tensors). Weight gradients can be restricted to a [`Region`] of a matrix, so a
// partly trainable matrix costs a GEMM over its trainable rows/columns only.

/// A rectangular part of a 2-D weight `[rows, cols]` (1-D weights train `Full` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Region {
    /// The whole tensor.
    Full,
    /// Rows `[start, start + len)`, all columns.
    Rows { start: usize, len: usize },
    /// Columns `[start, start + len)`, all rows.
    Cols { start: usize, len: usize },
}

impl Region {
    /// Shape of the region of a tensor of `shape` (1-D tensors: `[n]`).
    pub fn shape(self, shape: &[usize]) -> Vec<usize> {
        match (self, shape) {
            (Region::Full, s) => s.to_vec(),
            (Region::Rows { len, .. }, [_, c]) => vec![len, *c],
            (Region::Cols { len, .. }, [r, _]) => vec![*r, len],
            (_, s) => s.to_vec(),
        }
    }
    pub fn numel(self, shape: &[usize]) -> usize {
        self.shape(shape).iter().product()
    }
    /// Does the region fit inside a tensor of `shape`?
    pub fn check(self, shape: &[usize]) -> Result<()> {
        match (self, shape) {
            (Region::Full, _) => Ok(()),
            (Region::Rows { start, len }, [r, _]) if start + len <= *r => Ok(()),
            (Region::Cols { start, len }, [_, c]) if start + len <= *c => Ok(()),
            (reg, s) => bail!("region {reg:?} does not fit a tensor of shape {s:?}"),
        }
    }
}

/// f32 master copy and AdamW moments of one trainable buffer (a mask slice or a LoRA
/// factor), on the host; all three of the buffer's length, row-major like its region.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    pub master: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl ParamState {
    /// State starting at `master` with zero moments.
    pub fn new(master: Vec<f32>) -> Self {
        let n = master.len();
        Self {
            master,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// The scalars of one AdamW update (`torch.optim.AdamW`, decoupled decay), the same for
/// every buffer of the step; computed once on the host by `tune::optim::AdamW::next`.
/// The update itself: `cpu/ops/adamw.rs` (host code calls `host::adamw`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// Gradient scale from global-norm clipping (1: none).
    pub clip: f32,
}

/// Backward ops. Shapes: `n` rows (tokens), weights `[out, in]` as in HF.
pub trait TrainBackend: Backend {
    /// A copy of `t`.
    fn copy(&self, t: &Self::Tensor) -> Result<Self::Tensor>;

    /// Backward of `y = x @ w^T`: activation grads `dx [n, in] = dy [n, out] @ w [out, in]`.
    fn linear_bwd_input(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// The activation gradient through several linears of one input (q/k/v, gate/up, LoRA
    /// paths): `dx [n, in] = sum_i dy_i [n, out_i] @ w_i [out_i, in]`, in part order. The
    /// default adds the parts' `linear_bwd_input`s; a backend may do it in one pass.
    fn linear_bwd_input_sum(
        &self,
        parts: &[(&Self::Tensor, &Self::Tensor)],
    ) -> Result<Self::Tensor> {
        let Some(((dy, w), rest)) = parts.split_first() else {
            bail!("linear_bwd_input_sum: no parts");
        };
        let mut dx = self.linear_bwd_input(dy, w)?;
        for (dy, w) in rest {
            self.add_assign(&mut dx, &self.linear_bwd_input(dy, w)?)?;
        }
        Ok(dx)
    }
    /// Backward of `y = x @ w^T` for the weight region `reg`: param grads
    /// `dw_reg += (dy^T @ x)[reg]`, `dw_reg` of shape `reg.shape([out, in])`. Only the
    /// region's rows (columns) enter the GEMM.
    fn linear_bwd_weight(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        reg: Region,
        dw_reg: &mut Self::Tensor,
    ) -> Result<()>;

    /// Backward of `y = w * x / rms(x)`: activation grads `dx [n, d]` =; param grads
    /// `dw [d]` += when given.
    fn rmsnorm_bwd(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        dw: Option<&mut Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// Backward of rotate-half RoPE, in place on the gradient `dx [n, heads * head_dim]`
    /// (the transpose of the rotation: rotate by `-angle`), with the forward's `inv_freq`.
    fn rope_bwd(
        &self,
        dx: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Result<()>;

    /// Backward of [`Backend::attention`] (causal, GQA, sliding window), recomputing the
    /// probabilities. `dz [n, H*D]` -> activation grads `dq [n, H*D]`, `dk`, `dv`
    /// `[rows, G*D]` (=); dK/dV of a kv group sum over the query heads that share it.
    fn attention_bwd(
        &self,
        dz: &Self::Tensor,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spans: &[SeqSpan],
        shape: AttnShape,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// Backward of `act = silu(gate) * up`: activation grads `(dgate, dup)` =.
    fn swiglu_bwd(
        &self,
        dact: &Self::Tensor,
        gate: &Self::Tensor,
        up: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// Backward of the embedding lookup: param grads `dtable[ids[i]] += dx[i]`.
    fn embed_bwd(&self, dx: &Self::Tensor, ids: &[u32], dtable: &mut Self::Tensor) -> Result<()>;

    /// Fused softmax cross-entropy in f32. `logits [n, V]`, `targets[i]` the target of row i
    /// (`None`: no loss at that row). Returns the SUM of `-log p(target)` over rows with a
    /// target (f64) and activation grads `dlogits = (softmax - onehot) * scale` (rows
    /// without target: 0).
    fn xent_fwd_bwd(
        &self,
        logits: &Self::Tensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, Self::Tensor)>;

    /// [`TrainBackend::xent_fwd_bwd`] that may reuse the logits' buffer for the gradient
    /// (the logits are consumed).
    fn xent_fwd_bwd_owned(
        &self,
        logits: Self::Tensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, Self::Tensor)> {
        self.xent_fwd_bwd(&logits, targets, scale)
    }

    /// Region `reg` of `t`, as a host tensor.
    fn read_region(&self, t: &Self::Tensor, reg: Region) -> Result<HostTensor>;
    /// Overwrite region `reg` of `t` with `src` (shape `reg.shape(t.shape)`).
    fn write_region(&self, t: &mut Self::Tensor, reg: Region, src: &HostTensor) -> Result<()>;

    /// Bytes of one activation element (the training forward sizes its memory plan by it).
    fn elem_bytes(&self) -> usize {
        4
    }
    /// `(free, total)` device memory in bytes, where it is limited (None: plan as if
    /// unlimited).
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }

    // ---- The optimizer, where the weights live (masked AdamW on the tuned slices only).

    /// Where the backend keeps one buffer's [`ParamState`] (f32).
    type OptState: Send + Sync;
    /// State starting at `master` (flattened) with zero moments.
    fn opt_new(&self, master: &HostTensor) -> Result<Self::OptState>;
    /// A host copy of the state.
    fn opt_read(&self, s: &Self::OptState) -> Result<ParamState>;
    /// Overwrite the state (same length).
    fn opt_write(&self, s: &mut Self::OptState, host: &ParamState) -> Result<()>;
    /// Sum of squares of `g` (for the global gradient norm).
    fn sum_squares(&self, g: &Self::Tensor) -> Result<f64>;
    /// One AdamW update of `s` by gradient `g` (shape `reg.shape(w.shape)`, row-major like
    /// the master), then `w[reg] = master` (rounded to `w`'s dtype). Every value of `w`
    /// outside `reg` keeps its exact bits.
    fn adamw_update(
        &self,
        s: &mut Self::OptState,
        g: &Self::Tensor,
        w: &mut Self::Tensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()>;
}
