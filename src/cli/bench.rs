//! `pinpoint bench`: timings printed as JSON rows (one per measurement; `--out` also writes
//! them all as a JSON array). Speed targets live here, not in tests.
//!
//! Written once over the backend traits (`Backend`'s synchronization, memory peak, uniform
//! random tensors and GEMM choice, `TrainBackend`) for the CPU and the CUDA backend. Models come from `--model DIR`
//! or, with `--shape`, are random weights in a real model's shape (made on the device for
//! CUDA: 7B weights from the host took 16 s to generate and upload).
//!
//! Every row has the card, the backend, the shape, the median of `--reps` timed runs after
//! one warm-up (each run between two synchronizations, wall clock), tokens/s where it
//! applies, and `floor_ratio`: measured time / physical floor, the floor being FLOPs / the
//! measured dense GEMM rate (`gemm_tflops`, cuBLAS at 8192^3 on CUDA) or, for decode, bytes
//! of weights / the measured device copy bandwidth. FLOP counts are stated per row
//! (`flops`) and are the matmul and attention FLOPs of the work the method must do.

use super::{Device, DeviceArg, ModelArg};
use anyhow::{bail, ensure, Result};
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::TrainBackend;
use pinpoint::backend::{Backend, Gemm};
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{self, TokenPair};
use pinpoint::diagnose::path_patching::{
    activation_patching_last, clean_runs, path_patching_fast, path_patching_literal, Node,
};
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::Positions;
use pinpoint::model::checkpoint::{LayerWeights, ModelWeights};
use pinpoint::model::{ModelConfig, StoreDtype};
use pinpoint::{Model, Taps};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

mod measure;
use measure::{bench_model, bench_train, Ctx};
pub(super) use measure::{patching_inputs, random_seqs};

const WHATS: [&str; 5] = ["forward", "decode", "patching", "train", "gemm"];
pub(super) const SHAPES: [&str; 3] = ["smollm2-135m", "llama2-7b", "mistral-7b"];

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to time (comma-separated): forward (prefill), decode (greedy), patching (the
    /// exact path-patching sweep of every head, and the activation-patching sweep), train
    /// (one SPT step), gemm (GEMM and copy ceilings at the model's shapes).
    #[arg(required = true, value_delimiter = ',', value_parser = WHATS)]
    pub what: Vec<String>,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Random weights in a real model's shape instead of --model (comma-separated; each
    /// shape in turn).
    #[arg(long, value_delimiter = ',', value_parser = SHAPES, conflicts_with = "model")]
    pub shape: Vec<String>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed repetitions (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Decode: new tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Forward: logits at every position (as a plain HF forward) or only the last.
    #[arg(long, default_value = "all", value_parser = ["all", "last"])]
    pub logits: String,
    /// Patching: prompt pairs (--model: MMLU in the paper's template; --shape: random
    /// pairs of --seq tokens that differ only in a suffix, random label ids).
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Patching: also time the literal one-forward-per-head form on this many heads
    /// (extrapolated to all heads).
    #[arg(long, default_value_t = 4)]
    pub oracle_heads: usize,
    /// Train: number of tuned heads.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Train: positions at the end of each sequence that carry loss (SPT's loss is on the
    /// final assistant turn; 32 of 128 is the default data's share); 0: every position
    /// (a language-model step, as HF `labels = input_ids`).
    #[arg(long, default_value_t = 32)]
    pub loss_tokens: usize,
    /// Also write every row as a JSON array to this file (atomic write).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train: cap the step's device memory (GiB); layers whose activations do not fit
    /// are recomputed during backward. Default: keep what fits in free memory.
    #[arg(long)]
    pub mem_cap_gib: Option<f64>,
}

/// Where a model comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Dir(PathBuf),
    Shape(String),
}

impl Source {
    pub(super) fn label(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Shape(s) => s.clone(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The GEMMs `bench gemm` compares, the first the ceiling's: the backend's list, or its one
/// `linear` (None, named "backend").
fn gemms<B: Backend>(b: &B) -> Vec<Option<Gemm>> {
    match b.gemms() {
        [] => vec![None],
        g => g.iter().copied().map(Some).collect(),
    }
}

fn gemm_name(g: Option<Gemm>) -> &'static str {
    g.map_or("backend", Gemm::name)
}

/// The square size of the GEMM ceiling: 1024 on the CPU, 8192 on a GPU (a backend with a
/// choice of GEMMs).
fn ceiling_size<B: Backend>(b: &B) -> usize {
    if b.gemms().is_empty() {
        1024
    } else {
        8192
    }
}

/// Warm-up, then `reps` timed runs of `f`, each between two synchronizations.
fn time_reps<B: Backend>(
    b: &B,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    f()?;
    b.synchronize()?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        b.synchronize()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

/// Random-weight configurations of the real models (as HF config.json would give them).
pub(super) fn shape_config(name: &str) -> Result<ModelConfig> {
    let mut v = match name {
        "smollm2-135m" => json!({"hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "tie_word_embeddings": true}),
        "llama2-7b" => json!({"hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        "mistral-7b" => json!({"hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        _ => bail!("unknown shape {name:?} (known: {})", SHAPES.join(", ")),
    };
    let o = v.as_object_mut().expect("object");
    o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    o.insert("model_type".into(), "llama".into());
    o.insert("rms_norm_eps".into(), 1e-5.into());
    o.insert("rope_theta".into(), 10000.0.into());
    o.insert("max_position_embeddings".into(), 4096.into());
    o.insert("hidden_act".into(), "silu".into());
    ModelConfig::from_json(v)
}

/// Random weights of `cfg` on `b` (scales as tests/cuda_bench.rs: uniform(+-0.02) for
/// matrices, +-1 for the embedding, norms 1); every tensor has its own seed.
pub(super) fn random_model<B: TrainBackend>(cfg: ModelConfig, b: B) -> Result<Model<B>> {
    let (d, f, q, kv, v) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size,
    );
    let s = 0.02;
    let mut seed = 0u64;
    let mut r = |shape: &[usize], scale: f32, offset: f32| {
        seed += 1;
        b.uniform(shape, seed, scale, offset)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for _ in 0..cfg.num_hidden_layers {
        layers.push(LayerWeights {
            attn_norm: r(&[d], 0.0, 1.0)?,
            wq: r(&[q, d], s, 0.0)?,
            wk: r(&[kv, d], s, 0.0)?,
            wv: r(&[kv, d], s, 0.0)?,
            wo: r(&[d, q], s, 0.0)?,
            mlp_norm: r(&[d], 0.0, 1.0)?,
            w_gate: r(&[f, d], s, 0.0)?,
            w_up: r(&[f, d], s, 0.0)?,
            w_down: r(&[d, f], s, 0.0)?,
            qkv_bias: None,
            qk_norm: None,
        });
    }
    let weights = ModelWeights {
        embed: r(&[v, d], 1.0, 0.0)?,
        layers,
        final_norm: r(&[d], 0.0, 1.0)?,
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            Some(r(&[v, d], s, 0.0)?)
        },
    };
    Ok(Model {
        cfg,
        weights,
        backend: b,
        dtype: StoreDtype::BF16,
        dir: None,
    })
}

// ---- FLOP and byte counts ----

/// Matmul FLOPs of one token through one layer (q, k, v, o, gate, up, down).
fn layer_flops(c: &ModelConfig) -> f64 {
    let (d, q, kv, f) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
    );
    2.0 * (d * (q + 2.0 * kv) + q * d + 3.0 * d * f)
}

/// FLOPs of a forward of `batch` sequences of `seq` tokens (causal attention: QK^T and PV
/// over the visible keys) with `logit_rows` rows of lm_head.
fn forward_flops(c: &ModelConfig, batch: usize, seq: usize, logit_rows: usize) -> f64 {
    let (b, t) = (batch as f64, seq as f64);
    let attn = 4.0 * c.q_dim() as f64 * b * t * (t + 1.0) / 2.0;
    c.num_hidden_layers as f64 * (b * t * layer_flops(c) + attn)
        + 2.0 * logit_rows as f64 * (c.hidden_size * c.vocab_size) as f64
}

fn n_params(c: &ModelConfig) -> f64 {
    let (d, q, kv, f, v) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
        c.vocab_size as f64,
    );
    let layer = d * (q + 2.0 * kv) + q * d + 3.0 * d * f + 2.0 * d;
    v * d * if c.tie_word_embeddings { 1.0 } else { 2.0 } + c.num_hidden_layers as f64 * layer + d
}

/// FLOPs of the fast exact sweep: per source layer l, H*P new rows through W_o, and every
/// row of layers <= l through layer l's MLP; two label logits per row.
fn sweep_flops(c: &ModelConfig, pairs: usize) -> f64 {
    let (d, q, f) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.intermediate_size as f64,
    );
    let hp = (c.num_attention_heads * pairs) as f64;
    let l_n = c.num_hidden_layers;
    (0..l_n)
        .map(|l| (l + 1) as f64 * hp * 6.0 * d * f + 2.0 * hp * q * d)
        .sum::<f64>()
        + l_n as f64 * hp * 4.0 * d
}

/// FLOPs of the activation sweep: per layer l, H*P one-token rows through layers l.. with
/// attention over the prompt, two label logits each.
fn activation_flops(c: &ModelConfig, pairs: usize, seq: usize) -> f64 {
    let hp = (c.num_attention_heads * pairs) as f64;
    let per_layer = layer_flops(c) + 4.0 * c.q_dim() as f64 * seq as f64;
    let l_n = c.num_hidden_layers;
    (0..l_n)
        .map(|l| (l_n - l) as f64 * hp * per_layer + hp * 4.0 * c.hidden_size as f64)
        .sum()
}

/// Measured ceilings of one backend, shared by every row (the fastest of the runs).
#[derive(Debug, Clone, Copy)]
struct Ceil {
    /// Dense GEMM FLOP/s.
    gemm: f64,
    /// Copy bytes/s (read + written).
    copy: Option<f64>,
}

/// GEMM seconds of `x [n, k] @ w [m, k]^T` with `gemm`, timed over enough calls per run.
/// With `best`, the fastest run (a ceiling), else the median.
fn time_gemm<B: Backend>(
    b: &B,
    (n, k, m): (usize, usize, usize),
    gemm: Option<Gemm>,
    reps: usize,
    best: bool,
) -> Result<f64> {
    let x = b.uniform(&[n, k], 1001, 1.0, 0.0)?;
    let w = b.uniform(&[m, k], 1002, 0.02, 0.0)?;
    let flops = 2.0 * (n * k * m) as f64;
    // About 20 ms of work per timed run on a 500 TFLOP/s card, at least one call.
    let inner = ((1e13 / flops) as usize).clamp(1, 50);
    let times = time_reps(b, reps.max(3), || {
        for _ in 0..inner {
            match gemm {
                Some(g) => b.linear_with_gemm(&x, &w, g)?,
                None => b.linear(&x, &w)?,
            };
        }
        Ok(())
    })?;
    let t = if best {
        times.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        median(times)
    };
    Ok(t / inner as f64)
}

/// The GEMM ceiling, and the copy bandwidth `copy_rate` measures where meaningful.
fn ceilings<B: Backend>(b: &B, reps: usize, copy: Option<f64>) -> Result<Ceil> {
    let s = ceiling_size(b);
    let t = time_gemm(b, (s, s, s), gemms(b)[0], reps, true)?;
    Ok(Ceil {
        gemm: 2.0 * (s as f64).powi(3) / t,
        copy,
    })
}

fn sources(a: &BenchArgs) -> Result<Vec<Source>> {
    if a.shape.is_empty() {
        Ok(vec![Source::Dir(a.model.resolve()?)])
    } else {
        Ok(a.shape.iter().map(|s| Source::Shape(s.clone())).collect())
    }
}

fn run_cpu(a: &BenchArgs, rows: &mut Vec<Value>) -> Result<()> {
    let srcs = sources(a)?;
    for src in &srcs {
        let cfg = match src {
            Source::Dir(d) => ModelConfig::from_file(&d.join("config.json"))?,
            Source::Shape(s) => shape_config(s)?,
        };
        let host = super::limits::host_available();
        super::limits::bench(a, &cfg, 4, host, "this machine")?;
    }
    let ceil = ceilings(&CpuBackend, a.reps, None)?;
    let mut cx = Ctx { a, ceil, rows };
    for src in srcs {
        let make = || -> Result<Model<CpuBackend>> {
            match &src {
                Source::Dir(d) => Model::load_cpu(d),
                Source::Shape(s) => random_model(shape_config(s)?, CpuBackend),
            }
        };
        bench_model(&mut cx, &src, &make()?)?;
        if a.what.iter().any(|w| w == "train") {
            bench_train(&mut cx, &src, &CpuBackend, &make)?;
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn run_cuda(a: &BenchArgs, rows: &mut Vec<Value>) -> Result<()> {
    use pinpoint::backend::cuda::CudaBackend;
    let train = a.what.iter().any(|w| w == "train");
    let srcs = sources(a)?;
    let mut ceil = None;
    for src in &srcs {
        let (cfg, host) = match src {
            Source::Dir(d) => {
                let (cfg, w, _) = pinpoint::model::checkpoint::load_model_dir(d)?;
                (cfg, Some(w))
            }
            Source::Shape(s) => (shape_config(s)?, None),
        };
        let b: CudaBackend = a.device.cuda()?;
        let free = b.memory_info().map(|(f, _)| f as u64);
        super::limits::bench(a, &cfg, b.elem_bytes(), free, "the GPU")?;
        let ceil = match ceil {
            Some(c) => c,
            None => *ceil.insert(ceilings(&b, a.reps, copy_rate(&b, a.reps)?)?),
        };
        let t = Instant::now();
        let model = match &host {
            Some(w) => Model::from_host(cfg.clone(), w, b)?,
            None => random_model(cfg.clone(), b)?,
        };
        model.backend.synchronize()?;
        eprintln!(
            "{}: weights on {} in {:.2} s",
            src.label(),
            model.backend.device_name(),
            t.elapsed().as_secs_f64()
        );
        let mut cx = Ctx {
            a,
            ceil,
            rows: &mut *rows,
        };
        bench_model(&mut cx, src, &model)?;
        if train {
            // Free the weights first; the handle stays to read the device's memory peak.
            let Model {
                backend: probe,
                weights,
                ..
            } = model;
            drop(weights);
            let make = || -> Result<Model<CudaBackend>> {
                let b = a.device.cuda()?;
                match &host {
                    Some(w) => Model::from_host(cfg.clone(), w, b),
                    None => random_model(cfg.clone(), b),
                }
            };
            bench_train(&mut cx, src, &probe, &make)?;
        }
    }
    Ok(())
}

/// Device copy bandwidth in bytes/s (read + written): 512 MiB of bf16 copied on the device.
#[cfg(feature = "cuda")]
fn copy_rate(b: &pinpoint::backend::cuda::CudaBackend, reps: usize) -> Result<Option<f64>> {
    let n = 1usize << 28; // 512 MiB of bf16
    let src = b.uniform(&[n >> 14, 1 << 14], 77, 1.0, 0.0)?;
    let times = time_reps(b, reps.max(3), || {
        b.copy_tensor(&src)?;
        Ok(())
    })?;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Some(2.0 * (2 * n) as f64 / best))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &BenchArgs, _: &mut Vec<Value>) -> Result<()> {
    Err(super::no_cuda())
}

impl BenchArgs {
    /// The SPT step `train` times.
    fn train_step(&self) -> Result<pinpoint::tune::trainer::BenchStep> {
        Ok(pinpoint::tune::trainer::BenchStep {
            loss_tokens: self.loss_tokens,
            act_memory: self.act_memory()?,
            ..pinpoint::tune::trainer::BenchStep::new(self.k, self.batch, self.seq)
        })
    }

    fn act_memory(&self) -> Result<pinpoint::train::ActMemory> {
        use pinpoint::train::ActMemory;
        Ok(match self.mem_cap_gib {
            None => ActMemory::Auto,
            Some(g) => {
                anyhow::ensure!(g > 0.0 && g.is_finite(), "--mem-cap-gib must be positive");
                ActMemory::DeviceCap((g * (1u64 << 30) as f64) as usize)
            }
        })
    }
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    let res = match a.device.device {
        Device::Cpu => run_cpu(&a, &mut rows),
        Device::Cuda => run_cuda(&a, &mut rows),
    };
    // Rows measured before a failure are kept.
    if let Some(out) = &a.out {
        pinpoint::util::write_json(out, &Value::Array(rows))?;
        eprintln!("wrote {}", out.display());
    }
    res
}
