//! The one-command pipeline: split -> diagnose -> make-data -> tune (SPT at each K, plus
//! baselines) -> evaluate before/after -> KL -> behavioural knockout -> report.
//!
//! Resumable: every stage writes under `out/<stage>/` with atomic file writes and is
//! recorded in `out/stages.json` only once all its outputs exist. A rerun skips recorded
//! stages and re-does an interrupted one (tuning resumes from its last checkpoint).

mod circuit;
pub mod outputs;
pub mod report;
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
use crate::eval::metrics::{compute, Metrics};
use crate::eval::protocol::{self, judge_transcript, ProtocolConfig, Transcript};
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
    /// Top heads of the diagnosis whose circuit is scored (0: skip the circuit stage).
    #[serde(default = "circuit::default_receivers")]
    pub circuit_receivers: usize,
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
            circuit_receivers: circuit::default_receivers(),
        }
    }

    /// The settings every stage depends on (a rerun with other values refuses the folder).
    fn core(&self) -> serde_json::Value {
        json!({
            "model_dir": self.model_dir, "n_pairs": self.n_pairs,
            "n_train_mc": self.n_train_mc, "n_train_short": self.n_train_short,
            "n_eval_mc": self.n_eval_mc, "n_eval_short": self.n_eval_short,
            "steps": self.steps, "batch": self.batch, "seed": self.seed,
            "lr": [self.lr_spt, self.lr_sft, self.lr_lora],
            "kl": [self.kl_texts, self.kl_len], "protocol": [self.protocol.max_new_tokens_answer, self.protocol.max_new_tokens_reply],
            "all_challenges": self.protocol.all_challenges, "n_knockout": self.n_knockout,
            "balance": self.balance, "recipe": self.recipe,
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
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
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
                bail!(
                    "{} was made with other settings ({}); use another --out, or delete it to start over",
                    out.display(),
                    st.core
                );
            }
            st
        } else {
            State {
                core: cfg.core(),
                done: BTreeMap::new(),
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

    pub fn stage_seconds(&self) -> BTreeMap<String, f64> {
        self.state
            .done
            .iter()
            .map(|(k, v)| (k.clone(), v.seconds))
            .collect()
    }

    /// Run every stage (up to `stop_after`, if given: for tests and partial runs) on the CPU.
    pub fn run_all(&mut self, stop_after: Option<&str>) -> Result<()> {
        self.run_all_on(stop_after, &|dir: &Path| Model::load_cpu(dir))
    }

    /// Run every stage with models loaded by `load` (a directory onto one backend: the
    /// CPU, or a GPU).
    pub fn run_all_on<B: TrainBackend>(
        &mut self,
        stop_after: Option<&str>,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        self.cfg.check_stop_after(stop_after)?;
        let base = load(&self.cfg.model_dir)?;
        let tok = Tokenizer::from_dir(&self.cfg.model_dir)?;
        macro_rules! stop {
            ($n:expr) => {
                if stop_after == Some($n) {
                    return Ok(());
                }
            };
        }
        self.stage("split", |p, d| p.split_stage(d))?;
        stop!("split");
        self.stage("diagnose", |p, d| p.diagnose_stage(d, &base, &tok))?;
        stop!("diagnose");
        if self.cfg.circuit_receivers > 0 {
            self.stage("circuit", |p, d| p.circuit_stage(d, &base, &tok))?;
            stop!("circuit");
        }
        self.stage("make-data", |p, d| p.make_data_stage(d, &base, &tok))?;
        stop!("make-data");
        for v in self.cfg.variants() {
            if v != Variant::Base {
                let name = format!("tune-{}", v.name());
                self.stage(&name, |p, d| p.tune_stage(d, &v, &tok, load))?;
                stop!(name.as_str());
            }
        }
        for v in self.cfg.variants() {
            let name = format!("eval-{}", v.name());
            self.stage(&name, |p, d| p.eval_stage(d, &v, &base, &tok, load))?;
            stop!(name.as_str());
        }
        for v in self.cfg.variants() {
            if v != Variant::Base {
                let name = format!("kl-{}", v.name());
                self.stage(&name, |p, d| p.kl_stage(d, &v, &base, &tok, load))?;
                stop!(name.as_str());
            }
        }
        if self.cfg.n_knockout > 0 {
            self.stage("knockout", |p, d| p.knockout_stage(d, &base, &tok))?;
            stop!("knockout");
        }
        // The report is cheap and always rewritten from the stage outputs.
        report::write_report(self)?;
        Ok(())
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
    let outs: Vec<_> = qs
        .iter()
        .zip(ts)
        .map(|(q, t)| judge_transcript(q, t, None))
        .collect();
    write_jsonl(&d.join("transcripts.jsonl"), ts)?;
    write_jsonl(&d.join("outcomes.jsonl"), &outs)?;
    let mc: Vec<_> = outs.iter().filter(|o| o.mc).cloned().collect();
    let sa: Vec<_> = outs.iter().filter(|o| !o.mc).cloned().collect();
    let m: BTreeMap<&str, Metrics> = [
        ("all", compute(&outs)),
        ("mc", compute(&mc)),
        ("short", compute(&sa)),
    ]
    .into();
    write_json(&d.join("metrics.json"), &m)
}
