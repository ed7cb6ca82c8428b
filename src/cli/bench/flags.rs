//! `pinpoint bench`'s flags, and the training step they describe.

use super::setup::SHAPES;
use crate::cli::{DeviceArg, ModelArg};
use anyhow::Result;
use std::path::PathBuf;

/// What `bench` can time (`BenchArgs::what`).
const WHATS: [&str; 5] = ["forward", "decode", "patching", "train", "gemm"];

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

impl BenchArgs {
    /// The SPT step `train` times.
    pub(super) fn train_step(&self) -> Result<pinpoint::tune::trainer::BenchStep> {
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
