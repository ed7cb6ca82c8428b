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
//!
//! This file picks the backend and runs the workloads; `bench/flags.rs` holds the flags,
//! `bench/setup.rs` the workloads (shared with `pinpoint profile`), `bench/measure.rs` the
//! measurements, `bench/timing.rs` the timing and the ceilings, `bench/flops.rs` the FLOP
//! counts.

use super::Device;
use anyhow::Result;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::model::ModelConfig;
use pinpoint::Model;
use serde_json::Value;

mod flags;
mod flops;
mod measure;
mod setup;
mod timing;
pub use flags::BenchArgs;
use measure::{bench_model, bench_train, Ctx};
pub(super) use setup::{patching_inputs, random_model, random_seqs, shape_config, Source, SHAPES};
use timing::ceilings;
#[cfg(feature = "cuda")]
use timing::copy_rate;

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
    use pinpoint::backend::TrainBackend;
    use std::time::Instant;
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

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &BenchArgs, _: &mut Vec<Value>) -> Result<()> {
    Err(super::no_cuda())
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
