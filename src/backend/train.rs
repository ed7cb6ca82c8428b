//! Backward ops for training, forward and backward side by side: [`TrainBackend`] extends
//! [`Backend`] (whose forward ops the training forward reuses) with the gradient of every op,
//! and its f32 implementation for [`CpuBackend`].
//!
//! Convention (llm.c): "param grads +=" (weight gradients accumulate into buffers the caller
//! owns, so micro-batches add up), "activation grads =" (activation gradients are returned
//! as fresh tensors). Weight gradients can be restricted to a [`Region`] of a matrix, so a
//! partly trainable matrix costs a GEMM over its trainable rows/columns only.
//!
//! (Compiled as `crate::backend::train` via `#[path]` in lib.rs while `backend/mod.rs` is
//! owned elsewhere; on merge it can become `backend::train`.)

use crate::backend::cpu::gemm::Strided;
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::{gather_kv, key_lo, softmax_masked, ATT_QB};
use crate::backend::cpu::{rotate_half, softmax_in_place, CpuBackend};
use crate::backend::{AttnShape, Backend, SeqSpan};
use crate::model::HostTensor;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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

impl AdamStep {
    /// The update on host buffers (the reference every backend matches):
    /// `g' = g * clip; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
    /// master = master * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps)`.
    pub fn apply(&self, s: &mut ParamState, g: &[f32]) {
        let it = s.master.iter_mut().zip(s.m.iter_mut()).zip(s.v.iter_mut());
        for (((w, m), v), &g) in it.zip(g) {
            let gi = g * self.clip;
            *m = self.beta1 * *m + (1.0 - self.beta1) * gi;
            *v = self.beta2 * *v + (1.0 - self.beta2) * gi * gi;
            let denom = v.sqrt() / self.bc2_sqrt + self.eps;
            *w = *w * self.decay - self.step_size * *m / denom;
        }
    }
}

/// Backward ops. Shapes: `n` rows (tokens), weights `[out, in]` as in HF.
pub trait TrainBackend: Backend {
    /// A copy of `t`.
    fn copy(&self, t: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()>;

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
    /// (the transpose of the rotation: rotate by `-angle`).
    fn rope_bwd(
        &self,
        dx: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        theta: f64,
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

fn dims2(t: &HostTensor) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        [c] => Ok((1, *c)),
        s => bail!("expected a 2-D tensor, got shape {s:?}"),
    }
}

/// `dst [m, n] (+)= lhs [m, k] @ rhs [k, n]`, dst row-major contiguous, f32.
fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    lhs: Strided,
    rhs: Strided,
) {
    assert!(dst.len() >= m * n, "gemm: dst too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(lhs.end(m, k) <= lhs.data.len(), "gemm: lhs out of bounds");
    assert!(rhs.end(k, n) <= rhs.data.len(), "gemm: rhs out of bounds");
    #[cfg(target_arch = "x86_64")]
    if m >= 16 && std::arch::is_x86_feature_detected!("avx512f") {
        use crate::backend::cpu::gemm::gemm_packed;
        // SAFETY: avx512f detected; bounds asserted above and inside.
        unsafe { gemm_packed(dst, accumulate, m, n, k, lhs, rhs) };
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k > 32 * 1024 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every element the strided views address; dst covers
    // m*n contiguous elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Blocked attention backward of span `s`, kv group `g` (AVX-512): per head of the group
/// and block of [`ATT_QB`] queries, the probabilities are recomputed (`S = Q K^T`) and
/// `dP = dZ V^T`, `dQ = dS K`, `dK += dS^T Q`, `dV += P^T dZ` run as GEMMs over the block's
/// causal key range. Returns `dq [group, q_len, dh]`, `dk`, `dv [kv_len, dh]`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn attention_bwd_group_blocked(
    dz: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &SeqSpan,
    g: usize,
    shape: AttnShape,
    qc: usize,
    kc: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use crate::backend::cpu::gemm::gemm_small;
    let dh = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let kv_len = s.pos0 + s.q_len;
    let kg = gather_kv(k, kc, s, g, dh, false);
    let kt = gather_kv(k, kc, s, g, dh, true);
    let vt = gather_kv(v, kc, s, g, dh, true);
    let mut dq = vec![0.0f32; group * s.q_len * dh];
    let mut dk = vec![0.0f32; kv_len * dh];
    let mut dv = vec![0.0f32; kv_len * dh];
    let mut p = vec![0.0f32; ATT_QB * kv_len];
    let mut ds = vec![0.0f32; ATT_QB * kv_len];
    fn rows(data: &[f32], off: usize, rs: usize) -> Strided<'_> {
        Strided {
            data,
            off,
            rs,
            cs: 1,
        }
    }
    // A transposed: element (i, j) at data[j * cs + i].
    fn t(data: &[f32], cs: usize) -> Strided<'_> {
        Strided {
            data,
            off: 0,
            rs: 1,
            cs,
        }
    }
    for hh in 0..group {
        let h = g * group + hh;
        for i0 in (0..s.q_len).step_by(ATT_QB) {
            let nb = ATT_QB.min(s.q_len - i0);
            let lo = key_lo(s.pos0 + i0, shape.window);
            let w = s.pos0 + i0 + nb - lo;
            let qoff = (s.q_start + i0) * qc + h * dh;
            // SAFETY (all gemm_small calls): avx512f checked by the caller; destinations are
            // local buffers holding the rows written, disjoint from the operands.
            unsafe {
                gemm_small(
                    p.as_mut_ptr(),
                    w,
                    false,
                    nb,
                    w,
                    dh,
                    rows(q, qoff, qc),
                    rows(&kt, lo, kv_len),
                );
                gemm_small(
                    ds.as_mut_ptr(),
                    w,
                    false,
                    nb,
                    w,
                    dh,
                    rows(dz, qoff, qc),
                    rows(&vt, lo, kv_len),
                );
            }
            for r in 0..nb {
                let pos = s.pos0 + i0 + r;
                let (a, b) = (key_lo(pos, shape.window) - lo, pos + 1 - lo);
                let prow = &mut p[r * w..(r + 1) * w];
                softmax_masked(prow, a, b, scale);
                // dS_j = P_j (dP_j - sum_j P_j dP_j) * scale; masked entries have P = 0.
                let drow = &mut ds[r * w..(r + 1) * w];
                let pdp: f32 = prow[a..b].iter().zip(&drow[a..b]).map(|(x, y)| x * y).sum();
                for (d, &pj) in drow.iter_mut().zip(prow.iter()) {
                    *d = pj * (*d - pdp) * scale;
                }
            }
            unsafe {
                gemm_small(
                    dq[(hh * s.q_len + i0) * dh..].as_mut_ptr(),
                    dh,
                    false,
                    nb,
                    dh,
                    w,
                    rows(&ds, 0, w),
                    rows(&kg, lo * dh, dh),
                );
                gemm_small(
                    dk[lo * dh..].as_mut_ptr(),
                    dh,
                    true,
                    w,
                    dh,
                    nb,
                    t(&ds, w),
                    rows(q, qoff, qc),
                );
                gemm_small(
                    dv[lo * dh..].as_mut_ptr(),
                    dh,
                    true,
                    w,
                    dh,
                    nb,
                    t(&p, w),
                    rows(dz, qoff, qc),
                );
            }
        }
    }
    (dq, dk, dv)
}

/// Targets of a `[n, vocab]` cross-entropy: one per row, inside the vocabulary.
fn check_targets(n: usize, vocab: usize, targets: &[Option<u32>]) -> Result<()> {
    ensure!(
        targets.len() == n,
        "xent: {} targets for {n} rows",
        targets.len()
    );
    if let Some(t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
        bail!("xent: target {t} outside the vocabulary of {vocab}");
    }
    Ok(())
}

impl TrainBackend for CpuBackend {
    fn copy(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn scale(&self, x: &mut HostTensor, s: f32) -> Result<()> {
        x.data.par_iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn linear_bwd_input(&self, dy: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        self.linear_bwd_input_sum(&[(dy, w)])
    }

    fn linear_bwd_input_sum(&self, parts: &[(&HostTensor, &HostTensor)]) -> Result<HostTensor> {
        let Some(&(dy0, w0)) = parts.first() else {
            bail!("linear_bwd_input_sum: no parts");
        };
        let (n, _) = dims2(dy0)?;
        let (_, k) = dims2(w0)?;
        // Part i: dy_i [n, m_i] (row-major) @ w_i [m_i, k] (row-major).
        let mut views = Vec::with_capacity(parts.len());
        for (i, &(dy, w)) in parts.iter().enumerate() {
            let (n2, m) = dims2(dy)?;
            let (m2, k2) = dims2(w)?;
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

    fn linear_bwd_weight(
        &self,
        dy: &HostTensor,
        x: &HostTensor,
        reg: Region,
        dw_reg: &mut HostTensor,
    ) -> Result<()> {
        let (n, m) = dims2(dy)?;
        let (n2, k) = dims2(x)?;
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

    fn rmsnorm_bwd(
        &self,
        dy: &HostTensor,
        x: &HostTensor,
        w: &HostTensor,
        eps: f32,
        dw: Option<&mut HostTensor>,
    ) -> Result<HostTensor> {
        let (n, d) = dims2(x)?;
        ensure!(
            dy.shape == x.shape,
            "rmsnorm_bwd: dy {:?} vs x {:?}",
            dy.shape,
            x.shape
        );
        ensure!(
            w.numel() == d,
            "rmsnorm_bwd: weight of {} for rows of {d}",
            w.numel()
        );
        // y = w * x * r, r = (mean(x^2) + eps)^-1/2; with g = w * dy:
        // dx = r * g - x * r^3 * (g . x) / d;  dw += dy * x * r (summed over rows).
        if let Some(dw) = dw.as_ref() {
            ensure!(
                dw.numel() == d,
                "rmsnorm_bwd: dw has {} elements, rows {d}",
                dw.numel()
            );
        }
        let want_dw = dw.is_some();
        let rows_per_task = (1usize << 14).div_ceil(d).max(1);
        let mut dx = crate::backend::cpu::buf::par_zeroed(n * d);
        // Per task: dx of its rows (=) and their dw partial sum.
        let dw_sum = dx
            .par_chunks_mut(d * rows_per_task)
            .zip(x.data.par_chunks(d * rows_per_task))
            .zip(dy.data.par_chunks(d * rows_per_task))
            .map(|((dxs, xs), dys)| {
                let mut dw_part = if want_dw { vec![0.0f32; d] } else { vec![] };
                for ((dxi, xi), dyi) in dxs
                    .chunks_exact_mut(d)
                    .zip(xs.chunks_exact(d))
                    .zip(dys.chunks_exact(d))
                {
                    let ms = crate::backend::cpu::simd::dot(xi, xi) / d as f32;
                    let r = 1.0 / (ms + eps).sqrt();
                    let mut gx = 0.0f32;
                    for ((o, (x, dy)), w) in dxi.iter_mut().zip(xi.iter().zip(dyi)).zip(&w.data) {
                        *o = w * dy;
                        gx += *o * x;
                    }
                    let c = r * r * r * gx / d as f32;
                    for (o, x) in dxi.iter_mut().zip(xi) {
                        *o = r * *o - x * c;
                    }
                    for ((a, x), dy) in dw_part.iter_mut().zip(xi).zip(dyi) {
                        *a += dy * x * r;
                    }
                }
                dw_part
            })
            .reduce(Vec::new, |mut a, b| {
                if a.is_empty() {
                    return b;
                }
                for (a, b) in a.iter_mut().zip(&b) {
                    *a += b;
                }
                a
            });
        if let Some(dw) = dw {
            for (a, b) in dw.data.iter_mut().zip(&dw_sum) {
                *a += b;
            }
        }
        Ok(HostTensor::new(vec![n, d], dx))
    }

    fn rope_bwd(
        &self,
        dx: &mut HostTensor,
        head_dim: usize,
        positions: &[usize],
        theta: f64,
    ) -> Result<()> {
        let (n, c) = dims2(dx)?;
        ensure!(
            positions.len() == n && c % head_dim == 0,
            "rope_bwd: {n} rows, {} positions",
            positions.len()
        );
        rotate_half(&mut dx.data, c, head_dim, positions, theta, true);
        Ok(())
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
        let AttnShape {
            n_heads,
            n_kv_heads,
            head_dim: dh,
            window,
        } = shape;
        let (n, qc) = dims2(q)?;
        let (kr, kc) = dims2(k)?;
        ensure!(
            qc == n_heads * dh && kc == n_kv_heads * dh && dz.shape == q.shape,
            "attention_bwd: bad widths q {qc} k {kc} dz {:?}",
            dz.shape
        );
        ensure!(k.shape == v.shape, "attention_bwd: k and v shapes differ");
        for s in spans {
            s.check(n, kr)?;
        }
        let group = n_heads / n_kv_heads;
        let scale = 1.0 / (dh as f32).sqrt();
        #[cfg(target_arch = "x86_64")]
        let blocked = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let blocked = false;
        // One task per (span, kv group): it owns dK/dV of that group over the span's keys and
        // dQ of the group's query heads. Probabilities are recomputed as in the forward.
        let tasks: Vec<(usize, usize)> = (0..spans.len())
            .flat_map(|s| (0..n_kv_heads).map(move |g| (s, g)))
            .collect();
        struct Out {
            dq: Vec<f32>, // [group, q_len, dh]
            dk: Vec<f32>, // [kv_len, dh]
            dv: Vec<f32>,
        }
        let outs: Vec<Out> = tasks
            .par_iter()
            .map(|&(si, g)| {
                let s = spans[si];
                #[cfg(target_arch = "x86_64")]
                if blocked {
                    let (dq, dk, dv) = attention_bwd_group_blocked(
                        &dz.data, &q.data, &k.data, &v.data, &s, g, shape, qc, kc,
                    );
                    return Out { dq, dk, dv };
                }
                let kv_len = s.pos0 + s.q_len;
                let mut o = Out {
                    dq: vec![0.0; group * s.q_len * dh],
                    dk: vec![0.0; kv_len * dh],
                    dv: vec![0.0; kv_len * dh],
                };
                let mut p = Vec::with_capacity(kv_len);
                let mut dp = Vec::with_capacity(kv_len);
                for hh in 0..group {
                    let h = g * group + hh;
                    for i in 0..s.q_len {
                        let pos = s.pos0 + i;
                        let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                        let qrow = &q.data[(s.q_start + i) * qc + h * dh..][..dh];
                        let dzrow = &dz.data[(s.q_start + i) * qc + h * dh..][..dh];
                        p.clear();
                        dp.clear();
                        for j in lo..=pos {
                            let krow = &k.data[s.kv_row(j) * kc + g * dh..][..dh];
                            let vrow = &v.data[s.kv_row(j) * kc + g * dh..][..dh];
                            p.push(qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f32>() * scale);
                            dp.push(dzrow.iter().zip(vrow).map(|(a, b)| a * b).sum::<f32>());
                        }
                        softmax_in_place(&mut p);
                        // dS_j = P_j (dP_j - sum_j P_j dP_j)
                        let pdp: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                        let dqrow = &mut o.dq[(hh * s.q_len + i) * dh..][..dh];
                        for (jj, j) in (lo..=pos).enumerate() {
                            let ds = p[jj] * (dp[jj] - pdp) * scale;
                            let krow = &k.data[s.kv_row(j) * kc + g * dh..][..dh];
                            for (a, b) in dqrow.iter_mut().zip(krow) {
                                *a += ds * b;
                            }
                            let dkrow = &mut o.dk[j * dh..(j + 1) * dh];
                            for (a, b) in dkrow.iter_mut().zip(qrow) {
                                *a += ds * b;
                            }
                            let dvrow = &mut o.dv[j * dh..(j + 1) * dh];
                            for (a, b) in dvrow.iter_mut().zip(dzrow) {
                                *a += p[jj] * b;
                            }
                        }
                    }
                }
                o
            })
            .collect();
        let mut dq = crate::backend::cpu::buf::par_zeroed(n * qc);
        let mut dk = crate::backend::cpu::buf::par_zeroed(kr * kc);
        let mut dv = crate::backend::cpu::buf::par_zeroed(kr * kc);
        for (&(si, g), o) in tasks.iter().zip(outs) {
            let s = spans[si];
            for hh in 0..group {
                let h = g * group + hh;
                for i in 0..s.q_len {
                    dq[(s.q_start + i) * qc + h * dh..][..dh]
                        .copy_from_slice(&o.dq[(hh * s.q_len + i) * dh..][..dh]);
                }
            }
            // Spans may share key rows (a cache); accumulate.
            for j in 0..s.pos0 + s.q_len {
                let base = s.kv_row(j) * kc + g * dh;
                for c in 0..dh {
                    dk[base + c] += o.dk[j * dh + c];
                    dv[base + c] += o.dv[j * dh + c];
                }
            }
        }
        Ok((
            HostTensor::new(vec![n, qc], dq),
            HostTensor::new(vec![kr, kc], dk),
            HostTensor::new(vec![kr, kc], dv),
        ))
    }

    fn swiglu_bwd(
        &self,
        dact: &HostTensor,
        gate: &HostTensor,
        up: &HostTensor,
    ) -> Result<(HostTensor, HostTensor)> {
        ensure!(
            gate.shape == up.shape && dact.shape == gate.shape,
            "swiglu_bwd: shapes {:?} {:?} {:?}",
            dact.shape,
            gate.shape,
            up.shape
        );
        // act = g * sigmoid(g) * u;  dact/dg = u * s * (1 + g (1 - s)), dact/du = silu(g).
        const CHUNK: usize = 1 << 15;
        let len = gate.data.len();
        let (dg, du) = crate::backend::cpu::buf::par_new2(len, CHUNK, |c, dg, du| {
            let at = c * CHUNK;
            let n = dg.len();
            let (d, g, u) = (
                &dact.data[at..][..n],
                &gate.data[at..][..n],
                &up.data[at..][..n],
            );
            crate::backend::cpu::simd::silu_mul_bwd(d, g, u, dg, du)
        });
        Ok((
            HostTensor::new(gate.shape.clone(), dg),
            HostTensor::new(gate.shape.clone(), du),
        ))
    }

    fn embed_bwd(&self, dx: &HostTensor, ids: &[u32], dtable: &mut HostTensor) -> Result<()> {
        let (n, d) = dims2(dx)?;
        let (vocab, d2) = dims2(dtable)?;
        ensure!(
            n == ids.len() && d == d2,
            "embed_bwd: {n} rows for {} ids",
            ids.len()
        );
        for (row, &id) in dx.data.chunks_exact(d).zip(ids) {
            ensure!((id as usize) < vocab, "embed_bwd: id {id} outside {vocab}");
            for (a, b) in dtable.data[id as usize * d..][..d].iter_mut().zip(row) {
                *a += b;
            }
        }
        Ok(())
    }

    fn xent_fwd_bwd(
        &self,
        logits: &HostTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, HostTensor)> {
        self.xent_fwd_bwd_owned(logits.clone(), targets, scale)
    }

    /// In place: each row of logits becomes its row of dlogits (no 200 MB allocation,
    /// zero-fill and copy for a SmolLM2 batch).
    fn xent_fwd_bwd_owned(
        &self,
        logits: HostTensor,
        targets: &[Option<u32>],
        scale: f32,
    ) -> Result<(f64, HostTensor)> {
        let (n, vocab) = dims2(&logits)?;
        check_targets(n, vocab, targets)?;
        let mut d = logits;
        let losses: Vec<f32> = d
            .data
            .par_chunks_mut(vocab)
            .zip(targets)
            .map(|(row, t)| {
                let Some(t) = *t else {
                    row.fill(0.0);
                    return 0.0;
                };
                let max = crate::backend::cpu::simd::max(row);
                let l_t = row[t as usize];
                let sum = crate::backend::cpu::simd::exp_shifted_sum(row, max);
                let inv = 1.0 / sum;
                crate::backend::cpu::simd::scale(row, inv * scale);
                row[t as usize] -= scale;
                // -log softmax(t) = log(sum) + max - l_t
                sum.ln() + max - l_t
            })
            .collect();
        Ok((losses.iter().map(|&l| l as f64).sum(), d))
    }

    fn read_region(&self, t: &HostTensor, reg: Region) -> Result<HostTensor> {
        reg.check(&t.shape)?;
        Ok(match reg {
            Region::Full => t.clone(),
            Region::Rows { start, len } => {
                let c = t.shape[1];
                HostTensor::new(vec![len, c], t.data[start * c..(start + len) * c].to_vec())
            }
            Region::Cols { start, len } => {
                let (r, c) = (t.shape[0], t.shape[1]);
                let mut out = Vec::with_capacity(r * len);
                for i in 0..r {
                    out.extend_from_slice(&t.data[i * c + start..i * c + start + len]);
                }
                HostTensor::new(vec![r, len], out)
            }
        })
    }

    fn write_region(&self, t: &mut HostTensor, reg: Region, src: &HostTensor) -> Result<()> {
        reg.check(&t.shape)?;
        let n = reg.numel(&t.shape);
        ensure!(
            src.numel() == n,
            "write_region: {} values for {reg:?} of {:?}",
            src.numel(),
            t.shape
        );
        match reg {
            Region::Full => t.data.copy_from_slice(&src.data),
            Region::Rows { start, len } => {
                let c = t.shape[1];
                t.data[start * c..(start + len) * c].copy_from_slice(&src.data);
            }
            Region::Cols { start, len } => {
                let c = t.shape[1];
                for (i, row) in src.data.chunks_exact(len).enumerate() {
                    t.data[i * c + start..i * c + start + len].copy_from_slice(row);
                }
            }
        }
        Ok(())
    }

    type OptState = ParamState;

    fn opt_new(&self, master: &HostTensor) -> Result<ParamState> {
        Ok(ParamState::new(master.data.clone()))
    }

    fn opt_read(&self, s: &ParamState) -> Result<ParamState> {
        Ok(s.clone())
    }

    fn opt_write(&self, s: &mut ParamState, host: &ParamState) -> Result<()> {
        let n = s.master.len();
        ensure!(
            host.master.len() == n && host.m.len() == n && host.v.len() == n,
            "optimizer state of {} values written with {}/{}/{}",
            n,
            host.master.len(),
            host.m.len(),
            host.v.len()
        );
        *s = host.clone();
        Ok(())
    }

    fn sum_squares(&self, g: &HostTensor) -> Result<f64> {
        Ok(g.data.iter().map(|&x| x as f64 * x as f64).sum())
    }

    fn adamw_update(
        &self,
        s: &mut ParamState,
        g: &HostTensor,
        w: &mut HostTensor,
        reg: Region,
        a: &AdamStep,
    ) -> Result<()> {
        ensure!(
            g.numel() == s.master.len() && reg.numel(&w.shape) == s.master.len(),
            "adamw: gradient of {} values, state of {}, region {reg:?} of {:?}",
            g.numel(),
            s.master.len(),
            w.shape
        );
        a.apply(s, &g.data);
        let shape = reg.shape(&w.shape);
        self.write_region(w, reg, &HostTensor::new(shape, s.master.clone()))
    }
}
