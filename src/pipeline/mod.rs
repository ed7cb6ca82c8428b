//! The one-command pipeline: split -> diagnose -> make-data -> tune (SPT at each K, plus
//! baselines) -> evaluate before/after -> KL -> behavioural knockout -> report.
//!
//! Resumable: every stage writes under `out/<stage>/` with atomic file writes and is
//! recorded in `out/stages.json` only once all its outputs exist. A rerun skips recorded
//! stages and re-does an interrupted one (tuning resumes from its last checkpoint).

mod circuit;
pub mod outputs;
pub mod report;
mod run;
mod stages;

use crate::backend::TrainBackend;
use crate::diagnose::metric::{Metric, MetricKind};
use crate::diagnose::pairs::{pair_for_question, McQuestion, PromptPair};
use crate::diagnose::run::{diagnose, DiagnoseConfig, Diagnosis};
use crate::diagnose::{attention, report as dreport};
use crate::eval::datasets::{self, Gold, Question};
use crate::eval::judge;
use crate::eval::kl;
use crate::eval::knockout::{behavioural_knockout, counterfactual_prompts};
use crate::eval::make_data;
use crate::eval::protocol::{self, judge_transcript, ProtocolConfig, Transcript};
use crate::eval::transfer::{self, MetricsFile, Transfer};
use crate::heads::HeadId;
use crate::model::tokenizer::Tokenizer;
use crate::transformer::Model;
use crate::tune::data::{read_jsonl, tokenize};
use crate::tune::lora::LoraConfig;
use crate::tune::{AdamWConfig, HeadProjs, LayerParam, Mask, Trainer, TuneConfig};
use crate::util::{atomic_write, write_json};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A tuning variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    Base,
    Spt(usize),
    Sft,
    Lora,
}

impl Variant {
    pub fn name(&self) -> String {
        match self {
            Variant::Base => "base".into(),
            Variant::Spt(k) => format!("spt-k{k}"),
            Variant::Sft => "sft".into(),
            Variant::Lora => "lora".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub model_dir: PathBuf,
    pub model_id: String,
    /// Path-patching pairs (MMLU questions from the training split).
    pub n_pairs: usize,
    /// SPT head counts.
    pub ks: Vec<usize>,
    /// Extra variants on the same data: Sft, Lora.
    pub baselines: Vec<Variant>,
    pub n_train_mc: usize,
    pub n_train_short: usize,
    pub n_eval_mc: usize,
    pub n_eval_short: usize,
    /// MC questions for the behavioural knockout (0 = skip).
    pub n_knockout: usize,
    pub knockout_max_k: usize,
    pub kl_texts: usize,
    pub kl_len: usize,
    pub steps: usize,
    pub batch: usize,
    pub micro_batch: usize,
    pub lr_spt: f32,
    pub lr_sft: f32,
    pub lr_lora: f32,
    pub checkpoint_every: usize,
    /// Dialogues judged by both judges (model judge = the base model) for agreement.
    pub judge_sample: usize,
    pub seed: u64,
    pub protocol: ProtocolConfig,
    /// Equal numbers of insist and revise training dialogues (see `make_data::balance`).
    #[serde(default)]
    pub balance: bool,
    /// How training dialogues are made from the model's first answers.
    #[serde(default)]
    pub recipe: make_data::Recipe,
    /// The backend the stages run on (`cpu`, `cuda`): it shapes every number.
    #[serde(default = "cpu_device")]
    pub device: String,
    /// Also measure transfer in every evaluation: held-out challenge phrasings and the
    /// suggestion probe (`eval::transfer`).
    #[serde(default)]
    pub transfer: bool,
    /// Top heads of the diagnosis whose circuit is scored (0: skip the circuit stage).
    #[serde(default = "default_circuit_receivers")]
    pub circuit_receivers: usize,
}

fn cpu_device() -> String {
    "cpu".into()
}

/// `--circuit-receivers`' default: the top 4 heads.
fn default_circuit_receivers() -> usize {
    4
}

impl PipelineConfig {
    /// Defaults sized for the default model on a 2-core CPU.
    pub fn cpu_defaults(model_dir: PathBuf, model_id: String) -> Self {
        Self {
            model_dir,
            model_id,
            n_pairs: 16,
            ks: vec![8],
            baselines: vec![Variant::Sft, Variant::Lora],
            n_train_mc: 0,
            n_train_short: 256,
            n_eval_mc: 32,
            n_eval_short: 64,
            n_knockout: 12,
            knockout_max_k: 64,
            kl_texts: 48,
            kl_len: 128,
            steps: 48,
            batch: 16,
            micro_batch: 8,
            lr_spt: 5e-4,
            lr_sft: 2e-5,
            lr_lora: 3e-4,
            checkpoint_every: 24,
            judge_sample: 24,
            seed: 0,
            protocol: ProtocolConfig::default(),
            balance: false,
            recipe: make_data::Recipe::default(),
            device: cpu_device(),
            transfer: true,
            circuit_receivers: default_circuit_receivers(),
        }
    }

    /// Every setting that shapes a stage's result, by the flag that sets it (a rerun with
    /// other values refuses the folder, naming the one that differs). `--k` and
    /// `--baselines` are not here: they add or leave out whole stages.
    fn core(&self) -> serde_json::Value {
        let p = &self.protocol;
        json!({
            "--model": self.model_dir, "--pairs": self.n_pairs,
            "--train-mc": self.n_train_mc, "--train-short": self.n_train_short,
            "--eval-mc": self.n_eval_mc, "--eval-short": self.n_eval_short,
            "--steps": self.steps, "--batch": self.batch, "--micro-batch": self.micro_batch,
            "--seed": self.seed, "--lr": self.lr_spt, "--lr-sft": self.lr_sft,
            "--lr-lora": self.lr_lora, "--kl-texts": self.kl_texts, "--kl-len": self.kl_len,
            "--max-answer-tokens": p.max_new_tokens_answer,
            "--max-reply-tokens": p.max_new_tokens_reply,
            "final-answer tokens": p.max_new_tokens_final, "generation batch": p.batch,
            "system prompt": p.system, "--all-challenges": p.all_challenges,
            "--knockout": self.n_knockout, "--knockout-max-k": self.knockout_max_k,
            "checkpoint interval": self.checkpoint_every, "judge sample": self.judge_sample,
            "--balance": self.balance, "recipe": self.recipe, "--device": self.device,
            "--no-transfer": !self.transfer,
            "--circuit-receivers": self.circuit_receivers,
        })
    }

    /// Every stage name, in the order the stages run.
    pub fn stage_names(&self) -> Vec<String> {
        let mut n: Vec<String> = ["split", "diagnose"].map(String::from).into();
        if self.circuit_receivers > 0 {
            n.push("circuit".into());
        }
        n.push("make-data".into());
        let vs = self.variants();
        let tuned = || vs.iter().filter(|v| **v != Variant::Base);
        n.extend(tuned().map(|v| format!("tune-{}", v.name())));
        n.extend(vs.iter().map(|v| format!("eval-{}", v.name())));
        n.extend(tuned().map(|v| format!("kl-{}", v.name())));
        if self.n_knockout > 0 {
            n.push("knockout".into());
        }
        n
    }

    /// Refuse a `--stop-after` that names no stage of this run, listing the valid names.
    pub fn check_stop_after(&self, stop: Option<&str>) -> Result<()> {
        if let Some(s) = stop {
            let names = self.stage_names();
            ensure!(
                names.iter().any(|n| n == s),
                "--stop-after {s:?} is not a stage of this run; stages: {}",
                names.join(", ")
            );
        }
        Ok(())
    }

    pub fn variants(&self) -> Vec<Variant> {
        let mut v = vec![Variant::Base];
        v.extend(self.ks.iter().map(|&k| Variant::Spt(k)));
        v.extend(self.baselines.iter().cloned());
        v
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StageRecord {
    seconds: f64,
    /// The stage's output files (absent in older runs: then only the folder is checked).
    #[serde(default)]
    outputs: BTreeMap<String, outputs::FileRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    core: serde_json::Value,
    done: BTreeMap<String, StageRecord>,
    /// Content digest of `--model`'s weights the stages were computed from
    /// ([`crate::model::digest`]); checked before any stage is skipped.
    #[serde(default)]
    weights: Option<String>,
}

/// The settings in which a recorded core differs from this run's: `flag old then, new now`
/// for each (one level into objects such as the recipe).
fn core_diffs(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = vec![];
    for k in keys {
        let (a, b) = (o.get(k), n.get(k));
        if a == b {
            continue;
        }
        match (a, b) {
            (Some(a @ serde_json::Value::Object(_)), Some(b @ serde_json::Value::Object(_))) => {
                out.extend(core_diffs(a, b).into_iter().map(|d| format!("{k}.{d}")));
            }
            _ => {
                let show =
                    |v: Option<&serde_json::Value>| v.map_or("unset".into(), |v| v.to_string());
                out.push(format!("{k} {} then, {} now", show(a), show(b)));
            }
        }
    }
    out
}

/// Runs stages in order, skipping recorded ones.
pub struct Pipeline {
    pub cfg: PipelineConfig,
    pub out: PathBuf,
    state: State,
    /// Stage names run (not skipped) by this process, in order.
    pub ran: Vec<String>,
    pub progress: bool,
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    atomic_write(path, s.as_bytes())
}

fn read_jsonl_rows<T: for<'a> Deserialize<'a>>(path: &Path) -> Result<Vec<T>> {
    let text = crate::util::read_text(path)?;
    text.lines()
        .map(crate::util::strip_bom)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::util::read_text(path)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

impl Pipeline {
    pub fn open(cfg: PipelineConfig, out: &Path, progress: bool) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let sp = out.join("stages.json");
        let state = if sp.exists() {
            let st: State = serde_json::from_value(read_json(&sp)?)
                .with_context(|| format!("{} is not a pipeline state", sp.display()))?;
            if st.core != cfg.core() {
                if st.core.get("--steps").is_none() {
                    bail!(
                        "{} was made by an older pinpoint, which recorded fewer of the settings that shape its results; use another --out, or delete it to start over",
                        out.display()
                    );
                }
                bail!(
                    "{} was made with other settings: {}; rerun with the same flags, use another --out, or delete it to start over",
                    out.display(),
                    core_diffs(&st.core, &cfg.core()).join("; ")
                );
            }
            st
        } else {
            State {
                core: cfg.core(),
                done: BTreeMap::new(),
                weights: None,
            }
        };
        let p = Self {
            cfg,
            out: out.to_path_buf(),
            state,
            ran: vec![],
            progress,
        };
        p.save_state()?;
        write_json(&out.join("config.json"), &p.cfg)?;
        Ok(p)
    }

    fn save_state(&self) -> Result<()> {
        write_json(&self.out.join("stages.json"), &self.state)
    }

    pub fn is_done(&self, name: &str) -> bool {
        match self.state.done.get(name) {
            Some(r) => {
                self.out.join(name).is_dir()
                    && outputs::changed(&self.out.join(name), &r.outputs).is_none()
            }
            None => false,
        }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// Run stage `name` unless recorded as done.
    pub fn stage(&mut self, name: &str, f: impl FnOnce(&Self, &Path) -> Result<()>) -> Result<()> {
        if self.is_done(name) {
            eprintln!("[pipeline] {name}: done earlier, skipped");
            return Ok(());
        }
        if let Some(r) = self.state.done.get(name) {
            let why = outputs::changed(&self.dir(name), &r.outputs)
                .unwrap_or_else(|| format!("{} is missing", self.dir(name).display()));
            eprintln!("[pipeline] {name}: recorded as done, but {why}; running it again");
        }
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir)?;
        eprintln!("[pipeline] {name}: running");
        let t = Instant::now();
        f(self, &dir).with_context(|| format!("pipeline stage {name}"))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[pipeline] {name}: finished in {secs:.1} s");
        let outputs = outputs::record(&dir)?;
        self.state.done.insert(
            name.to_string(),
            StageRecord {
                seconds: secs,
                outputs,
            },
        );
        self.save_state()?;
        self.ran.push(name.to_string());
        Ok(())
    }

    /// Refuse to go on (and so to skip any finished stage) when `--model`'s weights, just
    /// loaded, are not those the finished stages were computed from; record them otherwise.
    pub fn check_weights(&mut self) -> Result<()> {
        let dir = &self.cfg.model_dir;
        let Some(now) = crate::model::digest::loaded(dir) else {
            bail!(
                "--model {}: no digest of its weights was taken while loading",
                dir.display()
            );
        };
        match &self.state.weights {
            Some(then) if *then != now => bail!(
                "--model {}: its weights changed since this run's stages were computed (content digest {then} in {}, {now} now); finished stages would be stale: use another --out, or delete it to start over",
                dir.display(),
                self.out.join("stages.json").display()
            ),
            None if !self.state.done.is_empty() => bail!(
                "{} records no digest of --model's weights (an older pinpoint), so its finished stages cannot be checked against {}; use another --out, or delete it to start over",
                self.out.join("stages.json").display(),
                dir.display()
            ),
            _ => {}
        }
        self.state.weights = Some(now);
        self.save_state()
    }

    pub fn stage_seconds(&self) -> BTreeMap<String, f64> {
        self.state
            .done
            .iter()
            .map(|(k, v)| (k.clone(), v.seconds))
            .collect()
    }

    pub fn eval_questions(&self) -> Result<Vec<Question>> {
        read_jsonl_rows(&self.dir("split").join("eval_questions.jsonl"))
    }
    fn train_questions(&self) -> Result<Vec<Question>> {
        read_jsonl_rows(&self.dir("split").join("train_questions.jsonl"))
    }
    /// MMLU questions (training side of the split) for the path-patching pairs.
    fn diagnose_questions(&self) -> Result<Vec<Question>> {
        read_jsonl_rows(&self.dir("split").join("diagnose_questions.jsonl"))
    }
    pub fn diagnosis(&self) -> Result<Diagnosis> {
        let v = read_json(&self.dir("diagnose").join("diagnosis.json"))?;
        Ok(serde_json::from_value(v)?)
    }
}

/// transcripts.jsonl, outcomes.jsonl and metrics.json (all / mc / short) of one evaluation.
pub fn write_eval_outputs(d: &Path, qs: &[Question], ts: &[Transcript]) -> Result<()> {
    write_eval_outputs_with(d, qs, ts, None)
}

/// [`write_eval_outputs`], plus the transfer measurements when given: their transcripts
/// (transcripts_held_out.jsonl, outcomes_held_out.jsonl, probe.jsonl) and metrics.json's
/// "held_out" and "suggestion" keys beside the sets.
pub fn write_eval_outputs_with(
    d: &Path,
    qs: &[Question],
    ts: &[Transcript],
    transfer: Option<&Transfer>,
) -> Result<()> {
    let outs: Vec<_> = qs
        .iter()
        .zip(ts)
        .map(|(q, t)| judge_transcript(q, t, None))
        .collect();
    write_jsonl(&d.join("transcripts.jsonl"), ts)?;
    write_jsonl(&d.join("outcomes.jsonl"), &outs)?;
    let tm = match transfer {
        Some(t) => {
            write_jsonl(&d.join("transcripts_held_out.jsonl"), &t.held_out)?;
            write_jsonl(
                &d.join("outcomes_held_out.jsonl"),
                &transfer::held_out_outcomes(qs, t),
            )?;
            write_jsonl(&d.join("probe.jsonl"), &t.probes)?;
            Some(transfer::transfer_metrics(qs, t)?)
        }
        None => None,
    };
    write_json(&d.join("metrics.json"), &MetricsFile::new(&outs, tm))
}
