//! `y = x @ w^T` on the GPU (`kernels/gemm.cu` and cuBLAS) and its backward.

use crate::backend::cuda::device::{int, CudaBackend, CudaTensor};
use crate::backend::cuda::ops::rows::region_geom;
use crate::backend::cuda::registry;
use crate::backend::{shapes, Backend, Gemm, Region};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

const GEMM_BM: usize = 64;

const GEMM_BN: usize = 64;

const GEMV_MAXN: usize = 8;

/// `Gemm::Auto` takes the GEMV up to this many rows. Measured on an H100, decode steps at
/// batch 8: SmolLM2 5.6 ms (GEMV) vs 6.6 (cuBLAS), Llama-2-7B 27.5 vs 12.1; batch 1: 3.7
/// vs 6.8 and 11.1 vs 11.9.
const AUTO_GEMV_ROWS: usize = 2;

const GEMV_WARPS: usize = 8;

impl CudaBackend {
    /// `x @ w^T` with an explicit GEMM choice.
    pub fn linear_with(&self, x: &CudaTensor, w: &CudaTensor, gemm: Gemm) -> Result<CudaTensor> {
        let (n, k, m) = shapes::linear(&x.shape, &w.shape)?;
        let mut out = self.tensor(vec![n, m])?;
        if n == 0 || m == 0 {
            return Ok(out);
        }
        let (ni, mi, ki) = (
            int(n, "rows")?,
            int(m, "out features")?,
            int(k, "in features")?,
        );
        match gemm {
            Gemm::Cublas => self.cublas_gemm(x, w, &mut out, ni, mi, ki)?,
            Gemm::Auto if n > AUTO_GEMV_ROWS => self.cublas_gemm(x, w, &mut out, ni, mi, ki)?,
            Gemm::Engine | Gemm::Auto if n <= GEMV_MAXN => {
                let f = self.func(registry::GEMV_BF16_TN)?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&x.buf)
                    .arg(&w.buf)
                    .arg(&mut out.buf)
                    .arg(&ni)
                    .arg(&mi)
                    .arg(&ki);
                let cfg = LaunchConfig {
                    grid_dim: (m.div_ceil(GEMV_WARPS) as u32, 1, 1),
                    block_dim: ((GEMV_WARPS * 32) as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { b.launch(cfg) }.context("gemv_bf16_tn")?;
            }
            Gemm::Engine | Gemm::Auto => {
                let f = self.func(registry::GEMM_BF16_TN)?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&x.buf)
                    .arg(&w.buf)
                    .arg(&mut out.buf)
                    .arg(&ni)
                    .arg(&mi)
                    .arg(&ki);
                ensure!(
                    n.div_ceil(GEMM_BM) < 65536,
                    "linear: {n} rows is too many for one call"
                );
                let cfg = LaunchConfig {
                    grid_dim: (m.div_ceil(GEMM_BN) as u32, n.div_ceil(GEMM_BM) as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { b.launch(cfg) }.context("gemm_bf16_tn")?;
            }
        }
        Ok(out)
    }

    /// The cuBLAS handle (on this backend's stream), created on first use.
    fn blas(&self) -> Result<&cudarc::cublas::CudaBlas> {
        self.blas
            .get_or_init(|| {
                // SAFETY: only tries to dlopen libcublas by its usual names.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err("libcublas is not on the library path".into());
                }
                cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| format!("{e:?}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("cuBLAS: {e}"))
    }

    /// Row-major bf16 GEMM by cuBLAS (f32 compute): `C[m, n] = op(A)[m, k] op(B)[k, n] +
    /// beta * C`. `a`, `b`, `c` are device addresses of element (0, 0) and `lda`, `ldb`,
    /// `ldc` their row strides in elements; `ta` means A is stored `[k, m]` (op = transpose),
    /// likewise `tb` for B stored `[n, k]`.
    ///
    /// Row-major X with row stride ld is column-major X^T with the same ld, so this is the
    /// column-major `C^T[n, m] = op(B)^T op(A)^T`: cuBLAS gets B first, then A.
    ///
    /// # Safety
    /// The addresses must be live device buffers of this context holding every element the
    /// strides address (`ld >= ` the row length used), and stay alive until the stream has
    /// run the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_rm(
        &self,
        ta: bool,
        tb: bool,
        (m, n, k): (i32, i32, i32),
        (a, lda): (u64, i32),
        (b, ldb): (u64, i32),
        (c, ldc): (u64, i32),
        beta: f32,
    ) -> Result<()> {
        use cudarc::cublas::sys;
        let blas = self.blas()?;
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let alpha = 1.0f32;
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(tb),
            op(ta),
            n,
            m,
            k,
            &alpha as *const f32 as *const _,
            b as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            ldb,
            a as *const _,
            sys::cudaDataType::CUDA_R_16BF,
            lda,
            &beta as *const f32 as *const _,
            c as *mut _,
            sys::cudaDataType::CUDA_R_16BF,
            ldc,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| anyhow!("cublasGemmEx (m {m}, n {n}, k {k}): {e:?}"))
    }

    fn cublas_gemm(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        out: &mut CudaTensor,
        n: i32,
        m: i32,
        k: i32,
    ) -> Result<()> {
        let (wp, _rw) = w.buf.device_ptr(&self.stream);
        let (xp, _rx) = x.buf.device_ptr(&self.stream);
        let (cp, _wc) = out.buf.device_ptr_mut(&self.stream);
        // out[n, m] = x[n, k] @ w[m, k]^T.
        // SAFETY: live buffers of the checked sizes; the guards outlive the queued call.
        unsafe { self.gemm_rm(false, true, (n, m, k), (xp, k), (wp, k), (cp, m), 0.0) }
    }
}

pub(crate) fn linear_bwd_input(
    cu: &CudaBackend,
    dy: &CudaTensor,
    w: &CudaTensor,
) -> Result<CudaTensor> {
    let (n, k) = shapes::linear_bwd_input(&[(&dy.shape, &w.shape)])?;
    let m = dy.shape[1];
    if m == 0 {
        return cu.zeros(&[n, k]);
    }
    let mut dx = cu.tensor(vec![n, k])?;
    if n == 0 || k == 0 {
        return Ok(dx);
    }
    let (ni, mi, ki) = (
        int(n, "rows")?,
        int(m, "out features")?,
        int(k, "in features")?,
    );
    {
        let (dyp, _g1) = dy.buf.device_ptr(&cu.stream);
        let (wp, _g2) = w.buf.device_ptr(&cu.stream);
        let (dxp, _g3) = dx.buf.device_ptr_mut(&cu.stream);
        // dx[n, k] = dy[n, m] @ w[m, k].
        // SAFETY: buffers of the checked shapes; the guards outlive the queued call.
        unsafe {
            cu.gemm_rm(
                false,
                false,
                (ni, ki, mi),
                (dyp, mi),
                (wp, ki),
                (dxp, ki),
                0.0,
            )
        }
        .with_context(|| format!("linear_bwd_input: dy {:?}, w {:?}", dy.shape, w.shape))?;
    }
    Ok(dx)
}

pub(crate) fn linear_bwd_weight(
    cu: &CudaBackend,
    dy: &CudaTensor,
    x: &CudaTensor,
    reg: Region,
    dw_reg: &mut CudaTensor,
) -> Result<()> {
    let (n, m, k) = shapes::linear_bwd_weight(&dy.shape, &x.shape, reg, dw_reg.numel())?;
    let g = region_geom(reg, &[m, k])?;
    if n == 0 || g.rows == 0 || g.cols == 0 {
        return Ok(()); // nothing to add
    }
    let (ni, mi, ki) = (
        int(n, "rows")?,
        int(m, "out features")?,
        int(k, "in features")?,
    );
    let (gr, gc) = (int(g.rows, "region rows")?, int(g.cols, "region cols")?);
    let (dyp, _g1) = dy.buf.device_ptr(&cu.stream);
    let (xp, _g2) = x.buf.device_ptr(&cu.stream);
    let (dwp, _g3) = dw_reg.buf.device_ptr_mut(&cu.stream);
    // dw_reg[rows, cols] += dy[:, row0 .. row0 + rows]^T [rows, n] @ x[:, col0 .. col0 +
    // cols] [n, cols]: the region's rows are columns of dy, its columns columns of x
    // (one of the two offsets is 0). bf16 is 2 bytes.
    let a = dyp + 2 * g.row0 as u64;
    let b = xp + 2 * g.col0 as u64;
    // SAFETY: dy [n, m] holds columns row0 .. row0 + rows (region checked), x [n, k] holds
    // columns col0 .. col0 + cols; dw_reg holds rows * cols; guards outlive the call.
    unsafe { cu.gemm_rm(true, false, (gr, gc, ni), (a, mi), (b, ki), (dwp, gc), 1.0) }.with_context(
        || {
            format!(
                "linear_bwd_weight: dy {:?}, x {:?}, region {reg:?}",
                dy.shape, x.shape
            )
        },
    )
}
