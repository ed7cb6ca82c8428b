//! `Engine`: a loaded model (CPU f32 or CUDA bf16) with its tokenizer.

use crate::blocking;
use anyhow::Context;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::cuda::CudaBackend;
use pinpoint::generate::{generate, GenConfig};
use pinpoint::model::tokenizer::{ChatMessage, Tokenizer};
use pinpoint::model::zoo;
use pinpoint::{Model, Taps};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::{Path, PathBuf};

/// The model on one backend.
pub enum Backed {
    Cpu(Box<Model<CpuBackend>>),
    Cuda(Box<Model<CudaBackend>>),
}

/// `on_model!(engine, |m| expr)`: `expr` with `m` the engine's `&Model<B>`, whatever B.
#[macro_export]
macro_rules! on_model {
    ($eng:expr, |$m:ident| $body:expr) => {
        match &$eng.backed {
            $crate::engine::Backed::Cpu(boxed) => {
                let $m = &**boxed;
                $body
            }
            $crate::engine::Backed::Cuda(boxed) => {
                let $m = &**boxed;
                $body
            }
        }
    };
}

#[pyclass(frozen, module = "pinpoint._pinpoint")]
pub struct Engine {
    pub backed: Backed,
    /// Absent for a model folder without tokenizer.json (text calls then fail).
    pub tok: Option<Tokenizer>,
    pub dir: PathBuf,
}

/// The CUDA backend on device 0 with its kernels loaded, as the CLI's `--device cuda`.
fn cuda() -> anyhow::Result<CudaBackend> {
    use pinpoint::backend::cuda::{cuda_available, Gemm};
    cuda_available()
        .map_err(|why| anyhow::anyhow!("device='cuda': CUDA is not usable here: {why}"))?;
    let b = CudaBackend::new(0)?.with_gemm(Gemm::Auto);
    b.load_kernels()
        .context("compiling/loading the CUDA kernels")?;
    Ok(b)
}

fn load(path: Option<PathBuf>, device: &str) -> anyhow::Result<Engine> {
    let dir = match path {
        Some(p) => p,
        None => zoo::default_model_dir(true).context("fetching the default model")?,
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("{} is a file; give a model folder", dir.display()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}", dir.display()))),
    }
    let tok = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&dir)?)
    } else {
        None
    };
    let backed = match device {
        "cpu" => Backed::Cpu(Box::new(Model::load_cpu(&dir)?)),
        "cuda" => {
            let (cfg, w, dtype) = pinpoint::model::checkpoint::load_model_dir(&dir)?;
            let mut m = Model::from_host(cfg, &w, cuda()?)?;
            m.dtype = dtype;
            m.dir = Some(dir.clone());
            Backed::Cuda(Box::new(m))
        }
        other => anyhow::bail!("device must be \"cpu\" or \"cuda\", got {other:?}"),
    };
    Ok(Engine { backed, tok, dir })
}

impl Engine {
    pub fn tok(&self) -> PyResult<&Tokenizer> {
        self.tok.as_ref().ok_or_else(|| {
            PyValueError::new_err(format!(
                "{} has no tokenizer.json: pass token ids instead of text",
                self.dir.display()
            ))
        })
    }
    pub fn cfg(&self) -> &pinpoint::model::ModelConfig {
        on_model!(self, |m| &m.cfg)
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[pymethods]
impl Engine {
    /// Load a HF model folder (None: the default model, fetched as the CLI does).
    #[staticmethod]
    #[pyo3(signature = (path=None, device="cpu"))]
    fn load(py: Python<'_>, path: Option<PathBuf>, device: &str) -> PyResult<Engine> {
        let device = device.to_string();
        blocking::run(py, None, move || load(path, &device))
    }

    /// The config as JSON (every field of pinpoint's ModelConfig).
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(self.cfg()).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    #[getter]
    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    #[getter]
    fn backend(&self) -> String {
        on_model!(self, |m| m.backend_name())
    }

    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.tok.is_some()
    }

    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.tok()?
            .encode(text, add_special_tokens)
            .map_err(|e| blocking::to_py(py, e))
    }

    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.tok()?
            .decode(&ids, skip_special_tokens)
            .map_err(|e| blocking::to_py(py, e))
    }

    /// `messages`: (role, content) pairs, rendered with the chat template and encoded.
    fn encode_chat(
        &self,
        py: Python<'_>,
        messages: Vec<(String, String)>,
        add_generation_prompt: bool,
    ) -> PyResult<Vec<u32>> {
        let msgs: Vec<ChatMessage> = messages
            .into_iter()
            .map(|(r, c)| ChatMessage::new(r, c))
            .collect();
        self.tok()?
            .encode_chat(&msgs, add_generation_prompt)
            .map_err(|e| blocking::to_py(py, e))
    }

    fn end_of_turn_ids(&self) -> Vec<u32> {
        self.tok
            .as_ref()
            .map(|t| t.end_of_turn_ids())
            .unwrap_or_else(|| self.cfg().eos_token_ids.clone())
    }

    /// Batched generation as `pinpoint generate`: per prompt (new tokens, stop reason).
    #[pyo3(signature = (prompts, max_new_tokens, temperature, top_p, seed, stop, eos_ids, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        seed: u64,
        stop: Vec<String>,
        eos_ids: Vec<u32>,
        progress: Option<PyObject>,
    ) -> PyResult<Vec<(Vec<u32>, String)>> {
        let cfg = GenConfig {
            max_new_tokens,
            temperature,
            top_p,
            seed,
            eos_ids,
            stop_strings: stop,
        };
        if temperature < 0.0 || !temperature.is_finite() {
            return Err(PyValueError::new_err(format!(
                "temperature must be >= 0, got {temperature}"
            )));
        }
        let tok = self.tok.as_ref();
        let outs = blocking::run(py, progress.as_ref(), || {
            let decode = |ids: &[u32]| match tok {
                Some(t) => t.decode(ids, true),
                None => Ok(String::new()),
            };
            let decode: Option<pinpoint::generate::DecodeFn<'_>> = match tok {
                Some(_) => Some(&decode),
                None => None,
            };
            on_model!(self, |m| generate(
                m,
                &prompts,
                &cfg,
                &Taps::new(),
                decode,
                &mut |_, _| {}
            ))
        })?;
        Ok(outs
            .into_iter()
            .map(|g| (g.tokens, format!("{:?}", g.stop)))
            .collect())
    }
}
