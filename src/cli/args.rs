//! What the subcommands share: the model and device flags, the loaded model, whether a
//! flag was given on the command line ([`given`]), and [`outln!`](crate::outln) (their
//! checked stdout).

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use pinpoint::model::zoo;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The parsed command line, kept to tell a flag the user gave from a default.
static MATCHES: OnceLock<ArgMatches> = OnceLock::new();

/// Keep the parsed command line's matches for [`given`] (the first kept stay).
pub fn keep_matches(m: ArgMatches) {
    let _ = MATCHES.set(m);
}

/// Whether the argument `id` (the field name) of the innermost subcommand was given on the
/// command line rather than left at its default (false when no matches were kept).
pub fn given(id: &str) -> bool {
    let Some(mut m) = MATCHES.get() else {
        return false;
    };
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m.ids().any(|i| i.as_str() == id) && m.value_source(id) == Some(ValueSource::CommandLine)
}

/// `println!` that returns an error (a closed pipe, a full disk) instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*)
            .map_err(|e| anyhow::Error::new(e).context("writing to stdout"))?
    }};
}

/// Where the model comes from: a HF directory, or the default model (fetched if absent).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// HF model directory (config.json, *.safetensors, tokenizer.json). Default: SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
}

/// A model on the CPU backend with its tokenizer and directory.
pub struct Loaded {
    pub dir: PathBuf,
    pub tok: pinpoint::model::tokenizer::Tokenizer,
    pub model: pinpoint::Model<pinpoint::backend::cpu::CpuBackend>,
}

impl ModelArg {
    /// Resolve, then load the tokenizer and the weights.
    pub fn load(&self) -> Result<Loaded> {
        let dir = self.resolve()?;
        let tok = pinpoint::model::tokenizer::Tokenizer::from_dir(&dir)?;
        let model = pinpoint::Model::load_cpu(&dir)?;
        tok.check_vocab(model.cfg.vocab_size, &dir)?;
        Ok(Loaded { dir, tok, model })
    }

    pub fn resolve(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => zoo::default_model_dir(true).context("fetching the default model"),
        }
    }
}

/// Which backend runs the model.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// f32 on the CPU (the oracle).
    #[default]
    Cpu,
    /// bf16 on CUDA device 0 (needs the `cuda` feature, a GPU, its driver and NVRTC).
    Cuda,
}

/// Which GEMM the CUDA backend's linear layers use.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmArg {
    /// The engine's GEMV for single-sequence decode (at most 2 rows), cuBLAS for the rest
    /// (measured on an H100: cuBLAS 550-740 TFLOP/s at prefill/training shapes, the
    /// engine GEMM ~125).
    #[default]
    Auto,
    /// The engine's own tensor-core GEMM.
    Engine,
    /// cuBLAS `cublasGemmEx` (bf16, f32 accumulation).
    Cublas,
}

/// `--device` (and `--gemm` for CUDA).
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Backend: cpu (f32) or cuda (bf16).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// CUDA: GEMM used by linear layers.
    #[arg(long, value_enum, default_value_t = GemmArg::Auto)]
    pub gemm: GemmArg,
}

#[cfg(feature = "cuda")]
impl DeviceArg {
    /// The CUDA backend on device 0 with kernels loaded; a clear error when CUDA cannot
    /// be used here.
    pub fn cuda(&self) -> Result<pinpoint::backend::cuda::CudaBackend> {
        use pinpoint::backend::cuda::{cuda_available, CudaBackend, Gemm};
        cuda_available()
            .map_err(|why| anyhow::anyhow!("--device cuda: CUDA is not usable here: {why}"))?;
        let gemm = match self.gemm {
            GemmArg::Engine => Gemm::Engine,
            GemmArg::Cublas => Gemm::Cublas,
            GemmArg::Auto => Gemm::Auto,
        };
        let b = CudaBackend::new(0)?.with_gemm(gemm);
        b.load_kernels()
            .context("compiling/loading the CUDA kernels")?;
        Ok(b)
    }
}

/// Without the `cuda` feature there is no CUDA backend to pick.
#[cfg(not(feature = "cuda"))]
pub fn no_cuda() -> anyhow::Error {
    anyhow::anyhow!("--device cuda: this pinpoint was built without the `cuda` feature")
}
