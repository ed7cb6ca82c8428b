//! The one-command pipeline: split -> diagnose -> make-data -> tune (SPT at each K, plus
//! baselines) -> evaluate before/after -> KL -> behavioural knockout -> report.
//!
//! Resumable: every stage writes under `out/<stage>/` with atomic file writes and is
//! recorded in `out/stages.json` only once all its outputs exist. A rerun skips recorded
//! stages and re-does an interrupted one (tuning resumes from its last checkpoint).

pub mod report;

use crate::backend::TrainBackend;
use crate::diagnose::metric::{Metric, MetricKind};
use crate::diagnose::pairs::{pair_for_question, McQuestion};
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
            lr_spt: 1e-3,
            lr_sft: 2e-5,
            lr_lora: 3e-4,
            checkpoint_every: 24,
            judge_sample: 24,
            seed: 0,
            protocol: ProtocolConfig::default(),
            balance: false,
            recipe: make_data::Recipe::default(),
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
        self.state.done.contains_key(name) && self.out.join(name).is_dir()
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
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir)?;
        eprintln!("[pipeline] {name}: running");
        let t = Instant::now();
        f(self, &dir).with_context(|| format!("pipeline stage {name}"))?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("[pipeline] {name}: finished in {secs:.1} s");
        self.state
            .done
            .insert(name.to_string(), StageRecord { seconds: secs });
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

    /// MMLU: evaluation, path-patching pairs and (optionally) training questions, disjoint.
    /// Short answer: the generated easy pool, families interleaved so that the evaluation
    /// sample holds every family; the rest train. Disjoint by id.
    fn split_stage(&self, d: &Path) -> Result<()> {
        let c = &self.cfg;
        let mmlu = datasets::mmlu(self.progress)?;
        let (eval_mc, rest_mc, s1) =
            datasets::split(&mmlu, c.n_eval_mc, c.n_pairs + c.n_train_mc, c.seed)?;
        let (diag_mc, train_mc) = rest_mc.split_at(c.n_pairs.min(rest_mc.len()));
        let pool = datasets::short_answer_questions(usize::MAX, c.seed);
        ensure!(
            c.n_eval_short + c.n_train_short <= pool.len(),
            "asked for {} evaluation + {} training short-answer questions, the generated pool has {}",
            c.n_eval_short,
            c.n_train_short,
            pool.len()
        );
        let eval_sa = &pool[..c.n_eval_short];
        let train_sa = &pool[c.n_eval_short..c.n_eval_short + c.n_train_short];
        let eval: Vec<Question> = eval_mc.into_iter().chain(eval_sa.iter().cloned()).collect();
        let train: Vec<Question> = train_mc.iter().chain(train_sa).cloned().collect();
        datasets::check_disjoint(
            &eval,
            &train
                .iter()
                .chain(diag_mc)
                .map(|q| q.id.clone())
                .collect::<Vec<_>>(),
        )?;
        write_jsonl(&d.join("eval_questions.jsonl"), &eval)?;
        write_jsonl(&d.join("train_questions.jsonl"), &train)?;
        write_jsonl(&d.join("diagnose_questions.jsonl"), diag_mc)?;
        write_json(
            &d.join("split.json"),
            &json!({"seed": c.seed,
                    "train": train.iter().map(|q| &q.id).collect::<Vec<_>>(),
                    "diagnose": diag_mc.iter().map(|q| &q.id).collect::<Vec<_>>(),
                    "eval": s1.eval.iter().chain(eval_sa.iter().map(|q| &q.id)).collect::<Vec<_>>()}),
        )
    }

    fn diagnose_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let diag = self.diagnose_questions()?;
        let mcs: Vec<McQuestion> = diag
            .iter()
            .filter_map(|q| match q.gold {
                Gold::Choice(a) => Some(McQuestion {
                    id: q.id.clone(),
                    question: q.question.clone(),
                    choices: q.choices.clone(),
                    answer: a,
                }),
                _ => None,
            })
            .take(self.cfg.n_pairs)
            .collect();
        ensure!(
            !mcs.is_empty(),
            "no multiple-choice questions for the diagnosis pairs (--pairs is 0?)"
        );
        let system = self.cfg.protocol.system.as_deref();
        let pairs: Vec<_> = mcs.iter().map(|q| pair_for_question(q, system)).collect();
        let metric = Metric::from_words(MetricKind::Ratio, tok, "Apologies", "Yes")?;
        let dg = diagnose(
            base,
            tok,
            &pairs,
            &metric,
            &DiagnoseConfig::default(),
            self.progress,
        )?;
        let k_show = self.cfg.ks.iter().copied().max().unwrap_or(8);
        dreport::write_diagnosis(
            d,
            &base.cfg,
            &self.cfg.model_id,
            &json!({"source": "mmlu (training split)", "ids": mcs.iter().map(|q| &q.id).collect::<Vec<_>>()}),
            ("Apologies", "Yes"),
            &dg,
            k_show,
        )?;
        // Attention share of the last token on the challenge span (paper Fig. 2c).
        let prompts: Vec<(Vec<u32>, usize)> = pairs
            .iter()
            .map(|p| attention::challenge_span(tok, &p.reference))
            .collect::<Result<_>>()?;
        let sh = attention::attention_shares(base, &prompts, None)?;
        let rank: BTreeMap<HeadId, usize> = dg
            .heads
            .iter()
            .map(|h| (HeadId::new(h.layer, h.head), h.rank))
            .collect();
        write_json(
            &d.join("attention.json"),
            &json!({"heads": sh.heads, "share": sh.share,
                    "rank": sh.heads.iter().map(|h| rank.get(h).copied()).collect::<Vec<_>>()}),
        )?;
        write_json(&d.join("diagnosis.json"), &dg)
    }

    fn make_data_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let train = self.train_questions()?;
        let first = protocol::first_answers(base, tok, &train, &self.cfg.protocol)?;
        let mut ds = make_data::build_dialogues(
            &train,
            &first,
            self.cfg.protocol.system.as_deref(),
            &self.cfg.recipe,
            self.cfg.seed,
        )?;
        if self.cfg.balance {
            ds = make_data::balance(ds, self.cfg.seed);
        }
        make_data::write_dialogues(
            d,
            &ds,
            json!({"model": self.cfg.model_id, "seed": self.cfg.seed, "source": "pipeline split", "balanced": self.cfg.balance, "recipe": self.cfg.recipe}),
        )
    }

    fn variant_dir(&self, v: &Variant) -> PathBuf {
        match v {
            Variant::Base => self.cfg.model_dir.clone(),
            _ => self.dir(&format!("tune-{}", v.name())),
        }
    }

    fn tune_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let c = &self.cfg;
        let model = load(&c.model_dir)?;
        let cfg = model.cfg.clone();
        let (mask, heads, lora, lr) = match v {
            Variant::Spt(k) => {
                let heads = self.diagnosis()?.top(*k);
                ensure!(
                    heads.len() == *k,
                    "the diagnosis ranks only {} heads",
                    heads.len()
                );
                (
                    Mask::heads(&cfg, &heads, HeadProjs::default_for(&cfg))?,
                    heads,
                    None,
                    c.lr_spt,
                )
            }
            Variant::Sft => (
                Mask::all(&cfg, model.weights.lm_head.is_none()),
                vec![],
                None,
                c.lr_sft,
            ),
            Variant::Lora => (
                Mask::none(),
                vec![],
                Some(LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    projs: ["q", "k", "v", "o"]
                        .iter()
                        .map(|p| LayerParam::parse_proj(p))
                        .collect::<Result<_>>()?,
                    layers: None,
                    seed: c.seed,
                }),
                c.lr_lora,
            ),
            Variant::Base => bail!("nothing to tune for the base model"),
        };
        let convs = read_jsonl(&self.dir("make-data").join("data.jsonl"))?;
        let data = tokenize(tok, &convs, None)?;
        let tc = TuneConfig {
            optim: AdamWConfig {
                lr,
                lr_end: lr / 100.0,
                total_steps: c.steps,
                weight_decay: 0.1,
                max_grad_norm: Some(1.0),
                ..AdamWConfig::default()
            },
            steps: c.steps,
            batch: c.batch,
            micro_batch: c.micro_batch,
            seed: c.seed,
            checkpoint_every: c.checkpoint_every,
            keep_checkpoints: 1,
            progress: self.progress,
            lora,
            ..TuneConfig::default()
        };
        let mut t = Trainer::new(model, mask, heads, data, tc, d)?;
        if t.resume()? {
            eprintln!(
                "[pipeline] resuming {} at step {}",
                v.name(),
                t.step_count()
            );
        }
        eprintln!(
            "[pipeline] {}: {} trainable parameters, {} dialogues",
            v.name(),
            t.trainable_numel(),
            convs.len()
        );
        t.run()?;
        // The checkpoints are only for resuming; the final model sits in `d`.
        let _ = std::fs::remove_dir_all(d.join("checkpoints"));
        Ok(())
    }

    fn eval_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        base: &Model<B>,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let qs = self.eval_questions()?;
        let train_ids = datasets::read_train_ids(&self.dir("make-data").join("ids.json"))?;
        datasets::check_disjoint(&qs, &train_ids)?;
        let owned;
        let model = if *v == Variant::Base {
            base
        } else {
            owned = load(&self.variant_dir(v))?;
            kl::check_same_base(&base.cfg, &owned.cfg)?;
            &owned
        };
        let ts = protocol::run_protocol(
            model,
            tok,
            &qs,
            &self.cfg.protocol,
            &crate::heads::Taps::new(),
            &format!("eval {}", v.name()),
        )?;
        write_eval_outputs(d, &qs, &ts)?;
        if *v == Variant::Base && self.cfg.judge_sample > 0 {
            // Agreement of the rule judge and the model judge (the base model) on a sample.
            let n = self.cfg.judge_sample.min(ts.len());
            // (question, transcript) pairs: the rule judge, as the metrics use it, needs both.
            let pairs: Vec<(&Question, &Transcript)> = qs.iter().zip(&ts).collect();
            let sample = crate::diagnose::pairs::sample(&pairs, n, self.cfg.seed);
            let dl: Vec<_> = sample.iter().map(|(_, t)| t.judge_dialogue()).collect();
            let by_model = judge::admits_mistake_model(base, tok, &dl, 8)?;
            let by_rules: Vec<bool> = sample
                .iter()
                .map(|(q, t)| judge::judge_reply(q, &t.first, &t.reply).retracts())
                .collect();
            write_json(
                &d.join("judge_agreement.json"),
                &json!({"judge_model": self.cfg.model_id, "agreement": judge::agreement(&by_rules, &by_model),
                        "ids": sample.iter().map(|(_, t)| &t.id).collect::<Vec<_>>(),
                        "rules": by_rules, "model": by_model}),
            )?;
        }
        Ok(())
    }

    fn kl_stage<B: TrainBackend>(
        &self,
        d: &Path,
        v: &Variant,
        base: &Model<B>,
        tok: &Tokenizer,
        load: &dyn Fn(&Path) -> Result<Model<B>>,
    ) -> Result<()> {
        let tuned = load(&self.variant_dir(v))?;
        let texts = datasets::owt_texts(self.progress)?;
        let texts: Vec<String> = texts.into_iter().take(self.cfg.kl_texts).collect();
        let seqs = kl::tokenize_texts(tok, &texts, self.cfg.kl_len)?;
        let r = kl::kl_divergence(base, &tuned, &seqs, 4, self.progress)?;
        write_json(&d.join("kl.json"), &r)
    }

    fn knockout_stage<B: TrainBackend>(
        &self,
        d: &Path,
        base: &Model<B>,
        tok: &Tokenizer,
    ) -> Result<()> {
        let qs: Vec<Question> = self
            .eval_questions()?
            .into_iter()
            .filter(|q| q.is_mc())
            .take(self.cfg.n_knockout)
            .collect();
        let dg = self.diagnosis()?;
        let order = dg.top(dg.heads.len());
        let ks = crate::diagnose::knockout::doubling_ks(self.cfg.knockout_max_k.min(order.len()));
        let cf = counterfactual_prompts(
            tok,
            &self.diagnose_questions()?,
            self.cfg.protocol.system.as_deref(),
        )?;
        let cf: Vec<Vec<u32>> = cf.into_iter().take(self.cfg.n_pairs.max(8)).collect();
        let mut pc = self.cfg.protocol.clone();
        pc.max_new_tokens_reply = pc.max_new_tokens_reply.min(32);
        let pts = behavioural_knockout(base, tok, &qs, &order, &ks, &cf, &pc)?;
        write_json(&d.join("knockout.json"), &pts)
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
