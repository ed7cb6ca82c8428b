//! `pinpoint tune`: supervised pinpoint tuning of chosen heads (and the baselines: full
//! fine-tuning, attention-only, MLP-only, LoRA, pinpoint + LoRA).

use super::{Device, DeviceArg, ModelArg};
use anyhow::{bail, ensure, Context, Result};
use pinpoint::backend::TrainBackend;
use pinpoint::heads::HeadId;
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::model::StoreDtype;
use pinpoint::train::ActMemory;
use pinpoint::tune::data::{read_jsonl, tokenize};
use pinpoint::tune::lora::LoraConfig;
use pinpoint::tune::{
    parse_heads_list, read_heads_json, AdamWConfig, HeadProjs, LayerParam, Mask, Trainer,
    TuneConfig,
};
use pinpoint::Model;
use std::path::Path;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneMode {
    /// Supervised pinpoint tuning: only the chosen heads' slices.
    Spt,
    /// Full fine-tuning (every weight).
    Sft,
    /// Every attention projection (of --layers, default all).
    Attn,
    /// The MLPs (of --layers, default all).
    Mlp,
    /// LoRA adapters only.
    Lora,
    /// Pinpoint slices plus LoRA adapters.
    SptLora,
}

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// heads.json from the diagnosis step (heads sorted by rank).
    #[arg(long, conflicts_with = "heads_list")]
    pub heads: Option<PathBuf>,
    /// Heads to tune (instead of --heads/--top-k), comma-separated: TransformerLens' head
    /// labels "L3H5,L10H2", or hook names "blocks.3.attn.hook_z[:, :, 5]",
    /// "blocks.3.attn.hook_pattern[:, 5]".
    #[arg(long)]
    pub heads_list: Option<String>,
    /// How many of the top-ranked heads of --heads to tune (paper: 32 for 7B models).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Training conversations, JSONL: {"messages": [{"role", "content"}, ...]}; the loss is
    /// on the final assistant turn.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the tuned model (HF layout), tune_summary.json, checkpoints/.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "spt")]
    pub mode: TuneMode,
    /// Projections a head contributes: any of q,k,v,o (default: q,k,v,o on MHA models,
    /// q,o on GQA models, where k/v are shared by a group of heads), plus `bias` to train the
    /// head's part of those projections' biases (Qwen2; frozen otherwise).
    #[arg(long)]
    pub proj: Option<String>,
    /// Layers for --mode attn/mlp/lora, e.g. "0,1,5" (default all).
    #[arg(long)]
    pub layers: Option<String>,
    #[arg(long, default_value_t = 3e-5)]
    pub lr: f32,
    /// Learning rate at the end of the polynomial decay.
    #[arg(long, default_value_t = 1e-7)]
    pub lr_end: f32,
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Power of the polynomial decay (1 = linear).
    #[arg(long, default_value_t = 1.0)]
    pub power: f32,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    #[arg(long, default_value_t = 120)]
    pub steps: usize,
    /// Global batch (sequences per update).
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Sequences per forward/backward (gradient accumulation; default = --batch).
    #[arg(long, default_value_t = 0)]
    pub micro_batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 20)]
    pub checkpoint_every: usize,
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Let weight decay shrink the frozen rows/cols of partly tuned matrices too (what the
    /// authors' code does).
    #[arg(long)]
    pub authors_decay: bool,
    /// Drop tokens past this length (the prompt must fit).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// dtype of the saved model: f32, bf16, f16 (default: the model's own).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub save_dtype: Option<String>,
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f32,
    /// Projections with LoRA adapters: any of q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o")]
    pub lora_proj: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Cap a step's device memory (GiB): layers whose activations do not fit are
    /// recomputed during backward. Default: keep what fits in free memory; on the CPU
    /// everything is kept.
    #[arg(long)]
    pub mem_cap_gib: Option<f64>,
    /// Recompute every layer's activations during backward (least memory).
    #[arg(long, conflicts_with = "mem_cap_gib")]
    pub recompute: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

fn parse_layers(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse()
                .with_context(|| format!("bad layer {x:?} in --layers"))
        })
        .collect()
}

fn select_heads(a: &TuneArgs, cfg: &pinpoint::model::ModelConfig) -> Result<Vec<HeadId>> {
    match (&a.heads, &a.heads_list) {
        (Some(p), None) => {
            let k = a
                .top_k
                .context("--heads needs --top-k K (how many of the top heads)")?;
            read_heads_json(p, cfg, k)
        }
        (None, Some(l)) => {
            ensure!(
                a.top_k.is_none(),
                "--top-k applies to --heads, not --heads-list"
            );
            parse_heads_list(l, cfg)
        }
        (None, None) => bail!("--mode spt needs --heads heads.json --top-k K, or --heads-list"),
        (Some(_), Some(_)) => bail!("give --heads or --heads-list, not both"),
    }
}

pub fn tune(a: TuneArgs) -> Result<()> {
    let dir = a.model.resolve()?;
    match a.device.device {
        Device::Cpu => tune_on(&a, &dir, &|d: &Path| Model::load_cpu(d)),
        #[cfg(feature = "cuda")]
        Device::Cuda => tune_on(&a, &dir, &|d: &Path| Model::load_on(d, a.device.cuda()?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(super::no_cuda()),
    }
}

/// The trainer's settings from the flags.
fn tune_config(a: &TuneArgs, lora: Option<LoraConfig>) -> Result<TuneConfig> {
    let save_dtype = a.save_dtype.as_deref().map(|s| match s {
        "bf16" => StoreDtype::BF16,
        "f16" => StoreDtype::F16,
        _ => StoreDtype::F32,
    });
    Ok(TuneConfig {
        optim: AdamWConfig {
            lr: a.lr,
            lr_end: a.lr_end,
            warmup_steps: a.warmup,
            total_steps: a.steps,
            power: a.power,
            weight_decay: a.weight_decay,
            max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
            ..AdamWConfig::default()
        },
        steps: a.steps,
        batch: a.batch,
        micro_batch: a.micro_batch,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        authors_decay: a.authors_decay,
        save_dtype,
        lora,
        progress: !a.quiet,
        act_memory: match (a.mem_cap_gib, a.recompute) {
            (_, true) => ActMemory::RecomputeAll,
            (Some(g), _) => {
                ensure!(g > 0.0 && g.is_finite(), "--mem-cap-gib must be positive");
                ActMemory::DeviceCap((g * (1u64 << 30) as f64) as usize)
            }
            (None, false) => ActMemory::Auto,
        },
        max_len: a.max_len,
    })
}

fn tune_on<B: TrainBackend>(
    a: &TuneArgs,
    dir: &Path,
    load: &dyn Fn(&Path) -> Result<Model<B>>,
) -> Result<()> {
    let dir = dir.to_path_buf();
    let model = load(&dir)?;
    let cfg = model.cfg.clone();
    let layers = a.layers.as_deref().map(parse_layers).transpose()?;
    let lora = matches!(a.mode, TuneMode::Lora | TuneMode::SptLora)
        .then(|| (a.lora_proj.as_str(), a.lora_rank));
    super::limits::tune(&cfg, a.max_len, layers.as_deref(), lora)?;
    let needs_heads = matches!(a.mode, TuneMode::Spt | TuneMode::SptLora);
    let heads = if needs_heads {
        select_heads(a, &cfg)?
    } else {
        vec![]
    };
    if !needs_heads && (a.heads.is_some() || a.heads_list.is_some()) {
        bail!("--heads/--heads-list apply to --mode spt and spt-lora only");
    }
    let projs = match &a.proj {
        Some(p) => HeadProjs::parse(p)?,
        None => HeadProjs::default_for(&cfg),
    };
    let mask = match a.mode {
        TuneMode::Spt | TuneMode::SptLora => Mask::heads(&cfg, &heads, projs)?,
        TuneMode::Sft => Mask::all(&cfg, model.weights.lm_head.is_none()),
        TuneMode::Attn => Mask::attn(&cfg, layers.as_deref())?,
        TuneMode::Mlp => Mask::mlp(&cfg, layers.as_deref())?,
        TuneMode::Lora => Mask::none(),
    };
    let lora = match a.mode {
        TuneMode::Lora | TuneMode::SptLora => Some(LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
            projs: a
                .lora_proj
                .split(',')
                .filter(|x| !x.trim().is_empty())
                .map(LayerParam::parse_proj)
                .collect::<Result<_>>()?,
            layers: layers.clone(),
            seed: a.seed,
        }),
        _ => None,
    };
    // Data before the tokenizer, so file errors come first.
    let convs = read_jsonl(&a.data)?;
    let tok = Tokenizer::from_dir(&dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    tok.check_vocab(cfg.vocab_size, &dir)?;
    let data = tokenize(&tok, &convs, a.max_len)
        .with_context(|| format!("tokenising {}", a.data.display()))?;
    let lines: Vec<usize> = convs.iter().map(|c| c.line).collect();
    let lens: Vec<usize> = data.iter().map(|s| s.ids.len()).collect();
    super::limits::tune_data(&a.data, &lines, &lens, &cfg)?;
    let has_ckpt =
        Trainer::<pinpoint::backend::cpu::CpuBackend>::latest_checkpoint(&a.out)?.is_some();
    if has_ckpt && !a.resume {
        bail!(
            "{} already holds checkpoints; pass --resume to continue, or choose another --out",
            a.out.display()
        );
    }
    let tc = tune_config(a, lora)?;
    let numel_total: usize = model
        .weights
        .named()
        .iter()
        .map(|(_, t)| model.backend.shape(t).iter().product::<usize>())
        .sum();
    let mut t = Trainer::new(model, mask, heads.clone(), data, tc, &a.out)?;
    if a.resume {
        if t.resume()? {
            eprintln!("resuming at step {}", t.step_count());
        } else {
            eprintln!("no checkpoint in {}; starting from step 0", a.out.display());
        }
    }
    let heads_s: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    eprintln!(
        "tuning {} of {} parameters ({:.4}%) on {} conversations{}",
        t.trainable_numel(),
        numel_total,
        100.0 * t.trainable_numel() as f64 / numel_total as f64,
        convs.len(),
        if heads.is_empty() {
            String::new()
        } else {
            format!("; heads {}", heads_s.join(","))
        }
    );
    let out = t.run()?;
    if let Some(last) = t.history.last() {
        eprintln!("done: step {} loss {:.4}", last.step, last.loss);
    }
    crate::outln!("{}", out.display());
    Ok(())
}
