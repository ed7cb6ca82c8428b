//! Subcommands, one module each.

mod args;
mod bench;
mod chat;
mod checks;
mod circuit;
mod diagnose;
mod eval;
mod kl;
mod limits;
mod logits;
mod make_data;
mod models;
mod pipeline;
mod profile;
mod sanity;
mod tune;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[cfg(not(feature = "cuda"))]
pub use args::no_cuda;
pub use args::{Device, DeviceArg, Loaded, ModelArg};

#[derive(Parser, Debug)]
#[command(
    name = "pinpoint",
    version,
    about = "Find and fix the attention heads that make a chat model sycophantic"
)]
pub struct Cli {
    /// Worker threads for the CPU backend. 0 or no --threads: every core (or
    /// $RAYON_NUM_THREADS when set); at most 4 per core.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download and import the default model (SmolLM2-135M-Instruct) into the cache.
    ///
    /// Example: pinpoint fetch
    Fetch,
    /// Convert a llama.cpp GGUF file into a HF model directory.
    ///
    /// Example: pinpoint import SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2
    Import {
        /// The .gguf file.
        gguf: PathBuf,
        /// Output directory (created; must not exist or be empty).
        out: PathBuf,
    },
    /// Print a model's configuration, parameter count and dtypes.
    ///
    /// Example: pinpoint inspect --model models/smollm2
    Inspect(models::InspectArgs),
    /// Chat with a model: applies its chat template and streams the reply.
    ///
    /// Example: pinpoint chat "What is the capital of France?"
    Chat(chat::ChatArgs),
    /// Continue raw text (no chat template), one or more prompts batched together.
    ///
    /// Example: pinpoint generate --prompt "The capital of France is" --max-new-tokens 16
    Generate(chat::GenerateArgs),
    /// The whole method in one command on the default model (or --model): diagnose, build
    /// training data from the model's own answers, tune the top-K heads, evaluate before
    /// and after, KL drift, knockout, report. Resumable: a rerun skips finished stages.
    ///
    /// Example: pinpoint pipeline --out run1
    Pipeline(pipeline::PipelineArgs),
    /// Two-turn "are you sure?" evaluation: confidence, truthfulness, accuracy, answer changes.
    ///
    /// Example: pinpoint eval --model tuned --out eval-tuned
    Eval(eval::EvalArgs),
    /// KL(original || tuned) of next-token distributions on OpenWebText passages.
    ///
    /// Example: pinpoint kl --base base_dir --tuned tuned_dir
    Kl(kl::KlArgs),
    /// Training dialogues from the model's own answers (insist when right, revise when wrong).
    ///
    /// Example: pinpoint make-data --n 200 --out train.jsonl
    MakeData(make_data::MakeDataArgs),
    /// Find the sycophancy heads: exact path patching of every head on reference /
    /// counterfactual prompt pairs; writes heads.json, heads.csv, a heatmap and a summary.
    ///
    /// Example: pinpoint diagnose --n 16 --out diagnosis
    Diagnose(diagnose::DiagnoseArgs),
    /// Attention share of each head on the challenge sentence (top-k vs the rest).
    ///
    /// Example: pinpoint attention --heads diagnosis/heads.json --top-k 16
    /// (or --heads-list "L3H5,blocks.10.attn.hook_z[:, :, 2]")
    Attention(diagnose::AttentionArgs),
    /// Mean-ablate the top-k heads and report the metric and label probabilities per k.
    ///
    /// Example: pinpoint knockout --heads diagnosis/heads.json --max-k 64
    /// (or --heads-list "L3H5,L10H2", ablated in that order)
    Knockout(diagnose::KnockoutArgs),
    /// From heads to a circuit: exact path patching of every earlier head and MLP into the
    /// receivers' q, k and v (batched), with EAP and EAP-IG beside it; writes circuit.json,
    /// circuit.svg and circuit.png.
    ///
    /// Example: pinpoint circuit --heads diagnosis/heads.json --top-k 4 --out circuit
    Circuit(circuit::CircuitArgs),
    /// Supervised pinpoint tuning: train only the chosen heads' q/k/v/o slices (or a
    /// baseline: full fine-tuning, LoRA), everything else frozen bit for bit.
    ///
    /// Example: pinpoint tune --heads out/heads.json --top-k 8 --data train.jsonl --out tuned
    Tune(tune::TuneArgs),
    /// Token ids and last-position logits of prompts as JSON (for cross-checks).
    ///
    /// Example: pinpoint logits --model tuned --chat --prompt "Are you sure?" --out l.json
    Logits(logits::LogitsArgs),
    /// Benchmarks printing JSON rows (forward prefill, decode).
    ///
    /// Example: pinpoint bench forward --batch 8 --seq 128
    Bench(bench::BenchArgs),
    /// Where the time of a workload goes: a table per op (CPU) or kernel (CUDA) with FLOPs,
    /// bytes and the roofline, plus profile.json and trace.json (Perfetto).
    ///
    /// Example: pinpoint profile train --out prof
    Profile(profile::ProfileArgs),
}

/// Parse the command line (exits with clap's message on a syntax error) and keep the
/// matches for [`args::given`].
pub fn parse_args() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let m = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
    args::keep_matches(m);
    cli
}

pub fn run(cli: Cli) -> Result<()> {
    pinpoint::util::check_cache_env()?;
    sanity::threads(cli.threads)?;
    if let Some(t) = cli.threads.filter(|&t| t > 0) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting --threads")?;
    }
    match cli.command {
        Command::Fetch => {
            let dir = pinpoint::model::zoo::default_model_dir(true)?;
            crate::outln!("{}", dir.display());
            Ok(())
        }
        Command::Import { gguf, out } => {
            checks::import(&gguf, &out)?;
            let _lock = pinpoint::guard::claim_dir(&out, "the output folder", "import")?;
            import(&gguf, &out)
        }
        Command::Inspect(a) => models::inspect(a),
        Command::Chat(a) => {
            checks::sampling(&a.sampling, &a.model)?;
            sanity::sampling(&a.sampling)?;
            chat::chat(a)
        }
        Command::Generate(a) => {
            checks::sampling(&a.sampling, &a.model)?;
            sanity::sampling(&a.sampling)?;
            chat::generate(a)
        }
        Command::Bench(a) => {
            checks::bench(&a)?;
            sanity::device(&a.device)?;
            bench::bench(a)
        }
        Command::Profile(a) => {
            checks::profile(&a)?;
            sanity::device(&a.device)?;
            limits::profile(&a)?;
            let _lock = claim(&a.out, "profile")?;
            profile::profile(a)
        }
        Command::Tune(a) => {
            checks::tune(&a)?;
            sanity::tune(&a)?;
            let _lock = locked_out(&a.out, &a.model, "tune")?;
            tune::tune(a)
        }
        Command::Logits(a) => {
            checks::logits(&a)?;
            sanity::logits(&a)?;
            logits::logits(a)
        }
        Command::Eval(a) => {
            checks::eval(&a)?;
            sanity::eval(&a)?;
            let _lock = claim(&a.out, "eval")?;
            eval::eval(a)
        }
        Command::Kl(a) => {
            checks::kl(&a)?;
            kl::kl(a)
        }
        Command::MakeData(a) => {
            checks::make_data(&a)?;
            sanity::make_data(&a)?;
            let _lock = claim(&a.out, "make-data")?;
            make_data::make_data(a)
        }
        Command::Pipeline(a) => {
            checks::pipeline(&a)?;
            sanity::pipeline(&a)?;
            let _lock = locked_out(&a.out, &a.model, "pipeline")?;
            pipeline::pipeline(a)
        }
        Command::Diagnose(a) => {
            checks::diagnose(&a)?;
            sanity::pairs(&a.pairs)?;
            let _lock = claim(&a.out, "diagnose")?;
            diagnose::diagnose(a)
        }
        Command::Attention(a) => {
            checks::attention(&a)?;
            sanity::pairs(&a.pairs)?;
            let _lock = claim(&a.out, "attention")?;
            diagnose::attention(a)
        }
        Command::Knockout(a) => {
            checks::knockout(&a)?;
            sanity::pairs(&a.pairs)?;
            let _lock = claim(&a.out, "knockout")?;
            diagnose::knockout(a)
        }
        Command::Circuit(a) => {
            circuit::check(&a)?;
            circuit::run(a)
        }
    }
}

/// The output folder of a long run, checked against the resolved model (the default
/// model is known only now), then claimed for `command` and locked for this process.
fn locked_out(out: &Path, m: &ModelArg, command: &str) -> Result<pinpoint::guard::DirLock> {
    let dir = m.resolve()?;
    pinpoint::guard::output_dir(out, "--out", &[&dir])?;
    claim(out, command)
}

/// `--out` claimed for `pinpoint {command}` (ownership marker, lock) until the guard drops:
/// one writer per folder, and never a folder pinpoint does not own.
fn claim(out: &Path, command: &str) -> Result<pinpoint::guard::DirLock> {
    pinpoint::guard::claim_dir(out, "--out", command)
}

fn import(gguf: &Path, out: &Path) -> Result<()> {
    pinpoint::model::gguf::import_gguf(gguf, out, true)?;
    eprintln!("imported {} -> {}", gguf.display(), out.display());
    Ok(())
}
