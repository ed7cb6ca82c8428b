//! `pinpoint profile`: one workload of `pinpoint bench` run once on the profiling wrapper
//! backend (`pinpoint::profile`), after an unrecorded warm-up: a per-op table on stdout,
//! `profile.json` and `trace.json` (Perfetto, chrome://tracing) in `--out`.

use super::bench::{patching_inputs, random_model, random_seqs, shape_config, Source, SHAPES};
use super::{Device, DeviceArg, ModelArg};
use anyhow::{Context, Result};
use pinpoint::backend::{Span, TrainBackend};
use pinpoint::diagnose::path_patching::{clean_runs, path_patching_fast};
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::Positions;
use pinpoint::profile::report::{self, Ceilings};
use pinpoint::profile::Profiled;
use pinpoint::tune::trainer::BenchStep;
use pinpoint::{Model, Taps};
use serde_json::{json, Value};
use std::path::PathBuf;

const WHATS: [&str; 4] = ["forward", "decode", "patching", "train"];

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// The workload: forward (prefill, all logits), decode (greedy), patching (clean runs
    /// and the exact path-patching sweep of every head), train (one SPT step).
    #[arg(value_parser = WHATS)]
    pub what: String,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Random weights in a real model's shape instead of --model.
    #[arg(long, value_parser = SHAPES, conflicts_with = "model")]
    pub shape: Option<String>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Decode: new tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Patching: prompt pairs.
    #[arg(long, default_value_t = 8)]
    pub pairs: usize,
    /// Train: number of tuned heads.
    #[arg(long, default_value_t = 16)]
    pub k: usize,
    /// Train: positions at the end of each sequence that carry loss (0: every position).
    #[arg(long, default_value_t = 32)]
    pub loss_tokens: usize,
    /// Also print one row per layer.
    #[arg(long)]
    pub by_layer: bool,
    /// Skip measuring the device's GEMM and copy ceilings (no roofline columns).
    #[arg(long)]
    pub no_ceilings: bool,
    /// Folder for profile.json and trace.json.
    #[arg(long, default_value = "profile")]
    pub out: PathBuf,
}

impl ProfileArgs {
    fn source(&self) -> Result<Source> {
        Ok(match &self.shape {
            Some(s) => Source::Shape(s.clone()),
            None => Source::Dir(self.model.resolve()?),
        })
    }

    fn workload(&self, src: &Source) -> Value {
        json!({"what": self.what, "model": src.label(), "batch": self.batch, "seq": self.seq,
            "new_tokens": self.new_tokens, "pairs": self.pairs, "k": self.k,
            "loss_tokens": self.loss_tokens})
    }
}

/// Runs the workload twice on `make()`'s model: a warm-up, then the recorded run.
fn record<B: TrainBackend>(
    a: &ProfileArgs,
    src: &Source,
    make: &dyn Fn() -> Result<Model<Profiled<B>>>,
) -> Result<pinpoint::profile::Profile> {
    match a.what.as_str() {
        "train" => {
            let step = BenchStep {
                loss_tokens: a.loss_tokens,
                ..BenchStep::new(a.k, a.batch, a.seq)
            };
            let mut t = step.trainer(make()?)?;
            t.step()?;
            t.model.backend.restart()?;
            t.step()?;
            t.model.backend.finish()
        }
        "forward" => {
            let m = make()?;
            let seqs = random_seqs(m.cfg.vocab_size, a.batch, a.seq, 0);
            let taps = Taps::new().with_logits(Positions::All);
            m.forward(&seqs, &taps)?;
            m.backend.restart()?;
            {
                let _s = Span::new(&m.backend, "forward", None);
                m.forward(&seqs, &taps)?;
            }
            m.backend.finish()
        }
        "decode" => {
            let m = make()?;
            let prompts = random_seqs(m.cfg.vocab_size, a.batch, a.seq, 1);
            let cfg = GenConfig {
                max_new_tokens: a.new_tokens,
                ..Default::default()
            };
            generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {})?;
            m.backend.restart()?;
            {
                let _s = Span::new(&m.backend, "generate", None);
                generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {})?;
            }
            m.backend.finish()
        }
        "patching" => {
            let m = make()?;
            let (pairs, metric) = patching_inputs(a.pairs, a.seq, src, &m.cfg)?;
            let chunk = pairs.len().max(1);
            let runs = clean_runs(&m, &pairs, &metric, chunk, None)?;
            path_patching_fast(&m, &runs, &metric, false, chunk, None)?;
            m.backend.restart()?;
            let runs = {
                let _s = Span::new(&m.backend, "clean runs", None);
                clean_runs(&m, &pairs, &metric, chunk, None)?
            };
            {
                let _s = Span::new(&m.backend, "sweep", None);
                path_patching_fast(&m, &runs, &metric, false, chunk, None)?;
            }
            m.backend.finish()
        }
        other => anyhow::bail!("unknown workload {other:?}"),
    }
}

/// Print the table and write both files.
fn emit(
    a: &ProfileArgs,
    src: &Source,
    p: &pinpoint::profile::Profile,
    c: Option<&Ceilings>,
) -> Result<()> {
    print!("{}", report::table(p, c));
    if a.by_layer {
        for r in report::layer_rows(p) {
            println!(
                "{:<10} {:<18} layer {:<5} {:>6} calls {:>10.3} ms",
                r.phase,
                r.op,
                report::layer_list(&r.layers),
                r.calls,
                1e3 * r.total_s
            );
        }
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating the output folder {}", a.out.display()))?;
    let pj = a.out.join("profile.json");
    pinpoint::util::write_json(&pj, &report::profile_json(p, c, a.workload(src)))?;
    let tj = a.out.join("trace.json");
    pinpoint::util::write_json(&tj, &report::trace_json(p))?;
    eprintln!(
        "wrote {} and {} (open the trace in https://ui.perfetto.dev or chrome://tracing)",
        pj.display(),
        tj.display()
    );
    Ok(())
}

pub fn profile(a: ProfileArgs) -> Result<()> {
    let src = a.source()?;
    match a.device.device {
        Device::Cpu => {
            use pinpoint::backend::cpu::CpuBackend;
            let c = (!a.no_ceilings)
                .then(|| report::ceilings_for(&CpuBackend))
                .transpose()?;
            let make = || -> Result<Model<Profiled<CpuBackend>>> {
                let b = Profiled::new(CpuBackend)?;
                match &src {
                    Source::Dir(d) => Model::load_on(d, b),
                    Source::Shape(s) => random_model(shape_config(s)?, b),
                }
            };
            let p = record(&a, &src, &make)?;
            emit(&a, &src, &p, c.as_ref())
        }
        Device::Cuda => profile_cuda(&a, &src),
    }
}

#[cfg(feature = "cuda")]
fn profile_cuda(a: &ProfileArgs, src: &Source) -> Result<()> {
    use pinpoint::backend::cuda::CudaBackend;
    let probe: CudaBackend = a.device.cuda()?;
    let c = (!a.no_ceilings)
        .then(|| report::ceilings_for(&probe))
        .transpose()?;
    drop(probe);
    let host = match src {
        Source::Dir(d) => Some(pinpoint::model::checkpoint::load_model_dir(d)?),
        Source::Shape(_) => None,
    };
    let make = || -> Result<Model<Profiled<CudaBackend>>> {
        let b = Profiled::new(a.device.cuda()?)?;
        match (&host, src) {
            (Some((cfg, w, _)), _) => Model::from_host(cfg.clone(), w, b),
            (None, Source::Shape(s)) => random_model(shape_config(s)?, b),
            (None, Source::Dir(_)) => unreachable!("a model directory is loaded above"),
        }
    };
    let p = record(a, src, &make)?;
    emit(a, src, &p, c.as_ref())
}

#[cfg(not(feature = "cuda"))]
fn profile_cuda(_: &ProfileArgs, _: &Source) -> Result<()> {
    Err(super::no_cuda())
}
