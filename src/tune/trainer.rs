//! The tuning loop: global batches (gradient accumulation over micro-batches, token-level
//! mean loss over the global batch), AdamW on the trainable slices, progress, atomic
//! checkpoints, bit-exact resume, and a stop with a clear message on a non-finite loss.
//!
//! Checkpoint layout under `out/checkpoints/step-NNNNNN/`: a HF model directory (full weights,
//! LoRA merged) plus `tune_state.json` (step, seed, data cursor, heads, slices, optimizer
//! settings, loss history) and `tune_state.safetensors` (f32 master copies and Adam moments
//! of the tuned slices only). `out/checkpoints/latest` names the newest complete one; a
//! checkpoint directory is written under a temporary name and renamed when complete.
//!
//! Data order: update k uses examples `k*batch .. (k+1)*batch` of an endless stream made of
//! epochs, each a permutation drawn from `(seed, epoch)`. The RNG state is therefore
//! `(seed, step)`, and resume reproduces an uninterrupted run bit for bit.

use crate::backend::{ParamState, Region, Span, TrainBackend};
use crate::heads::HeadId;
use crate::model::checkpoint::{
    load_tensors, safetensors_metadata, save_model_dir, save_model_dir_as, save_safetensors_with,
    stored_dtypes,
};
use crate::model::{HostTensor, ModelWeights, StoreDtype};
use crate::train::{loss_and_grads_with, soft_targets, ActMemory, Adapter, Grads, TrainSeq};
use crate::transformer::Model;
use crate::tune::lora::{self, LoraConfig};
use crate::tune::mask::{param, param_mut, Mask, ParamId};
use crate::tune::optim::{AdamW, AdamWConfig};
use crate::util::{atomic_write, write_json};
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod checkpoint;
mod diverge;
pub use diverge::{weights_bounded, GROWTH_LIMIT, WEIGHT_LIMIT};

/// Settings of a tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneConfig {
    pub optim: AdamWConfig,
    /// Updates of the whole run.
    pub steps: usize,
    /// Sequences per update (global batch).
    pub batch: usize,
    /// Sequences per forward/backward (gradient accumulation); `batch` when 0.
    pub micro_batch: usize,
    pub seed: u64,
    /// Write a checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept (older ones are deleted); at least 1.
    pub keep_checkpoints: usize,
    /// Weight decay also shrinks the frozen rows/cols of a partly tuned matrix (what the
    /// authors' code does: masked gradients, decay on the whole matrix).
    pub authors_decay: bool,
    /// dtype of saved model directories (None: the model's own).
    pub save_dtype: Option<StoreDtype>,
    pub lora: Option<LoraConfig>,
    /// Show a progress bar.
    pub progress: bool,
    /// Which layers' activations the forward keeps for the backward (the rest are
    /// recomputed): the memory/speed trade of a step.
    #[serde(default)]
    pub act_memory: ActMemory,
    /// The `--max-len` the data was tokenized with (recorded in checkpoints, so a resume
    /// with another one is named as such).
    #[serde(default)]
    pub max_len: Option<usize>,
}

impl Default for TuneConfig {
    fn default() -> Self {
        Self {
            optim: AdamWConfig::default(),
            steps: 120,
            batch: 128,
            micro_batch: 0,
            seed: 0,
            checkpoint_every: 20,
            keep_checkpoints: 2,
            authors_decay: false,
            save_dtype: None,
            lora: None,
            progress: true,
            act_memory: ActMemory::Auto,
            max_len: None,
        }
    }
}

/// One update's record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens: usize,
    pub seconds: f64,
}

pub struct Trainer<B: TrainBackend> {
    pub model: Model<B>,
    pub mask: Mask,
    pub adapters: Vec<Adapter<B::Tensor>>,
    pub opt: AdamW,
    /// AdamW state of each trainable buffer (mask slices, then adapters' A and B), kept
    /// where the weights are.
    pub states: Vec<B::OptState>,
    state_lens: Vec<usize>,
    pub cfg: TuneConfig,
    /// The heads the mask came from (recorded in checkpoints; may be empty).
    pub heads: Vec<HeadId>,
    pub out: PathBuf,
    pub history: Vec<StepLog>,
    data: Vec<TrainSeq>,
    last_checkpoint: Option<PathBuf>,
    /// Content digest of the base model's weights as loaded ([`crate::model::digest`]);
    /// None for a model not loaded from a folder.
    base_digest: Option<String>,
    /// Largest magnitude of each mask slice before training (the divergence check's scale).
    base_max: Vec<f32>,
}

fn model_summary(cfg: &crate::model::ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architecture": cfg.architecture,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
    })
}

/// Tokens kept of each teacher distribution of a retain example (the rest is one bucket).
pub const RETAIN_TOP_K: usize = 32;

/// The teacher of every retain example in `data` that has none: the next-token
/// distributions of `model` as given (before any update), so a resumed run gets the same.
fn fill_teachers<B: TrainBackend>(
    model: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    data: &mut [TrainSeq],
    cfg: &TuneConfig,
) -> Result<()> {
    let todo: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].retain && data[i].teacher.is_empty())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    if cfg.progress {
        eprintln!(
            "retain: the original model's next-token distributions on {} examples",
            todo.len()
        );
    }
    let chunk = if cfg.micro_batch == 0 {
        cfg.batch
    } else {
        cfg.micro_batch
    };
    for idx in todo.chunks(chunk.max(1)) {
        let seqs: Vec<TrainSeq> = idx.iter().map(|&i| data[i].clone()).collect();
        let teachers = soft_targets(model, adapters, &seqs, RETAIN_TOP_K)?;
        for (&i, t) in idx.iter().zip(teachers) {
            data[i].teacher = t;
        }
    }
    Ok(())
}

impl<B: TrainBackend> Trainer<B> {
    /// A run that trains `mask` (and LoRA adapters if `cfg.lora`) of `model` on `data`,
    /// writing under `out`.
    pub fn new(
        model: Model<B>,
        mask: Mask,
        heads: Vec<HeadId>,
        data: Vec<TrainSeq>,
        cfg: TuneConfig,
        out: &Path,
    ) -> Result<Self> {
        ensure!(!data.is_empty(), "no training examples");
        ensure!(cfg.batch > 0, "batch size must be positive");
        ensure!(cfg.keep_checkpoints > 0, "keep at least one checkpoint");
        for (i, s) in data.iter().enumerate() {
            ensure!(
                s.n_targets() > 0,
                "training example {i} has no target tokens"
            );
        }
        if model.weights.lm_head.is_none() {
            ensure!(
                !mask.trains(ParamId::LmHead),
                "lm_head is tied; train the embedding instead"
            );
        }
        let adapters = match &cfg.lora {
            Some(lc) => lora::init(&model, lc)?,
            None => vec![],
        };
        ensure!(
            !mask.is_empty() || !adapters.is_empty(),
            "nothing to train: the mask is empty and there are no LoRA adapters"
        );
        let mut data = data;
        fill_teachers(&model, &adapters, &mut data, &cfg)?;
        let b = &model.backend;
        let mut masters = vec![];
        for s in &mask.slices {
            let t = param(&model.weights, s.param)?;
            masters.push(b.read_region(t, s.region)?);
        }
        for a in &adapters {
            masters.push(b.download(&a.a)?);
            masters.push(b.download(&a.b)?);
        }
        let state_lens = masters.iter().map(|m| m.numel()).collect();
        let base_max = masters[..mask.slices.len()]
            .iter()
            .map(|m| m.data.iter().fold(0f32, |a, x| a.max(x.abs())))
            .collect();
        let states = masters
            .iter()
            .map(|m| b.opt_new(m))
            .collect::<Result<Vec<_>>>()?;
        let mut optim = cfg.optim;
        optim.total_steps = cfg.steps;
        let opt = AdamW::new(optim)?;
        let base_digest = model.dir.as_deref().and_then(crate::model::digest::loaded);
        Ok(Self {
            model,
            mask,
            adapters,
            opt,
            states,
            state_lens,
            cfg,
            heads,
            out: out.to_path_buf(),
            history: vec![],
            data,
            last_checkpoint: None,
            base_digest,
            base_max,
        })
    }

    /// Updates done.
    pub fn step_count(&self) -> usize {
        self.opt.step
    }

    /// Example indices of update `step`.
    pub fn batch_indices(&self, step: usize) -> Vec<usize> {
        let n = self.data.len();
        let mut out = Vec::with_capacity(self.cfg.batch);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for g in step * self.cfg.batch..(step + 1) * self.cfg.batch {
            let epoch = g / n;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                let seed = self.cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
                cached = Some((epoch, perm));
            }
            out.push(cached.as_ref().unwrap().1[g % n]);
        }
        out
    }

    /// Total parameters in the trainable slices and adapters.
    pub fn trainable_numel(&self) -> usize {
        self.state_lens.iter().sum()
    }

    /// Host copies of the optimizer state of every trainable buffer.
    pub fn host_states(&self) -> Result<Vec<ParamState>> {
        self.states
            .iter()
            .map(|s| self.model.backend.opt_read(s))
            .collect()
    }

    /// One update. A non-finite loss or gradient stops with an error naming the step; the
    /// weights are then untouched by this step.
    pub fn step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        let k = self.opt.step;
        let idx = self.batch_indices(k);
        let seqs: Vec<TrainSeq> = idx.iter().map(|&i| self.data[i].clone()).collect();
        let n_targets: usize = seqs.iter().map(|s| s.n_targets()).sum();
        let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let mut grads = Grads::zeros(&self.model, &self.mask, &self.adapters)?;
        let micro = if self.cfg.micro_batch == 0 {
            self.cfg.batch
        } else {
            self.cfg.micro_batch
        };
        let mut sum = 0.0;
        for chunk in seqs.chunks(micro) {
            let (l, _) = loss_and_grads_with(
                &self.model,
                &self.adapters,
                &self.mask,
                chunk,
                1.0 / n_targets as f32,
                &mut grads,
                self.cfg.act_memory,
            )?;
            sum += l;
        }
        let loss = sum / n_targets as f64;
        let hint = || match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        if !loss.is_finite() {
            bail!(
                "step {}: the loss is {loss} (not finite); training stopped, {}",
                k + 1,
                hint()
            );
        }
        let first = self.history.first().map(|h| h.loss);
        let limit = first.map(|f| diverge::loss_limit(f, self.model.cfg.vocab_size));
        if let Some(limit) = limit.filter(|&l| loss > l) {
            bail!(
                "step {}: the loss is {loss:.4}, past {limit:.4} (4 x the first step's and 2 x a uniform guess's): training diverged (try a lower --lr); training stopped, {}",
                k + 1,
                hint()
            );
        }
        let b = &self.model.backend;
        let span = Span::new(b, "optimizer", None);
        let mut sq = Vec::with_capacity(self.states.len());
        for g in &grads.slices {
            sq.push(b.sum_squares(g)?);
        }
        for (ga, gb) in &grads.adapters {
            sq.push(b.sum_squares(ga)?);
            sq.push(b.sum_squares(gb)?);
        }
        let norm = AdamW::norm_of(&sq);
        drop(span);
        if !norm.is_finite() {
            bail!(
                "step {}: the gradient norm is {norm} (not finite); training stopped, {}",
                k + 1,
                hint()
            );
        }
        // Scalars first (refuses without side effects), then every buffer on the backend.
        let (adam, info) = self.opt.next(norm)?;
        let ns = self.mask.slices.len();
        let Model {
            backend, weights, ..
        } = &mut self.model;
        let backend = &*backend;
        let span = Span::new(backend, "optimizer", None);
        for (i, s) in self.mask.slices.iter().enumerate() {
            let w = param_mut(weights, s.param)?;
            backend.adamw_update(&mut self.states[i], &grads.slices[i], w, s.region, &adam)?;
        }
        for (i, (a, (ga, gb))) in self.adapters.iter_mut().zip(&grads.adapters).enumerate() {
            let (sa, sb) = self.states[ns + 2 * i..].split_at_mut(1);
            backend.adamw_update(&mut sa[0], ga, &mut a.a, Region::Full, &adam)?;
            backend.adamw_update(&mut sb[0], gb, &mut a.b, Region::Full, &adam)?;
        }
        drop(span);
        if self.cfg.authors_decay {
            self.decay_frozen_remainder(info.lr)?;
        }
        let log = StepLog {
            step: k + 1,
            loss,
            lr: info.lr,
            grad_norm: info.grad_norm,
            tokens,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.history.push(log);
        Ok(log)
    }

    /// Authors' behaviour: `w *= 1 - lr * wd` on the frozen rows/cols of partly tuned matrices.
    fn decay_frozen_remainder(&mut self, lr: f32) -> Result<()> {
        let f = 1.0 - lr * self.opt.cfg.weight_decay;
        for p in self.mask.partial_params() {
            let b = &self.model.backend;
            let t = param(&self.model.weights, p)?;
            let mut w = b.read_region(t, Region::Full)?;
            let (rows, cols) = (w.shape[0], w.shape[1]);
            let mut tuned = vec![false; rows * cols];
            for (_, reg) in self.mask.slices_of(p) {
                for r in 0..rows {
                    for c in 0..cols {
                        let inside = match reg {
                            Region::Full => true,
                            Region::Rows { start, len } => (start..start + len).contains(&r),
                            Region::Cols { start, len } => (start..start + len).contains(&c),
                        };
                        tuned[r * cols + c] |= inside;
                    }
                }
            }
            for (x, t) in w.data.iter_mut().zip(&tuned) {
                if !t {
                    *x *= f;
                }
            }
            let t = param_mut(&mut self.model.weights, p)?;
            self.model.backend.write_region(t, Region::Full, &w)?;
        }
        Ok(())
    }

    /// Copy the optimizer's master values into the model (slices) and the adapters.
    fn write_masters(&mut self) -> Result<()> {
        let host = self.host_states()?;
        let ns = self.mask.slices.len();
        let Model {
            backend, weights, ..
        } = &mut self.model;
        for (s, st) in self.mask.slices.iter().zip(&host) {
            let t = param_mut(weights, s.param)?;
            let shape = s.region.shape(backend.shape(t));
            backend.write_region(t, s.region, &HostTensor::new(shape, st.master.clone()))?;
        }
        for (i, a) in self.adapters.iter_mut().enumerate() {
            let (sa, sb) = (&host[ns + 2 * i], &host[ns + 2 * i + 1]);
            let (shape_a, shape_b) = (backend.shape(&a.a).to_vec(), backend.shape(&a.b).to_vec());
            backend.write_region(
                &mut a.a,
                Region::Full,
                &HostTensor::new(shape_a, sa.master.clone()),
            )?;
            backend.write_region(
                &mut a.b,
                Region::Full,
                &HostTensor::new(shape_b, sb.master.clone()),
            )?;
        }
        Ok(())
    }

    /// Host weights with LoRA merged: what a saved model holds.
    pub fn final_weights(&self) -> Result<ModelWeights<HostTensor>> {
        if self.adapters.is_empty() {
            self.model.host_weights()
        } else {
            lora::merged(&self.model, &self.adapters)
        }
    }

    /// Train until `stop` updates are done (at most `cfg.steps`), writing checkpoints.
    pub fn run_until(&mut self, stop: usize) -> Result<()> {
        let stop = stop.min(self.cfg.steps);
        let start = self.opt.step;
        let bar = crate::util::bar(
            self.cfg.steps as u64,
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            self.cfg.progress,
        );
        bar.set_position(start as u64);
        while self.opt.step < stop {
            crate::util::cancel::check()?;
            let log = self.step()?;
            bar.set_position(log.step as u64);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
                log.loss,
                log.lr,
                log.grad_norm,
                log.tokens as f64 / log.seconds.max(1e-9)
            ));
            let every = self.cfg.checkpoint_every;
            if (every > 0 && log.step % every == 0) || log.step == self.cfg.steps {
                self.save_checkpoint()?;
            }
        }
        bar.finish();
        Ok(())
    }

    /// Train to the end and save the final model into `out` (a HF directory, LoRA merged)
    /// with `tune_summary.json`.
    pub fn run(&mut self) -> Result<PathBuf> {
        self.run_until(self.cfg.steps)?;
        let w = self.final_weights()?;
        crate::model::checkpoint::weights_finite(&w)
            .with_context(|| self.diverged(self.opt.step))?;
        weights_bounded(&w).with_context(|| self.diverged(self.opt.step))?;
        diverge::check_growth(&self.mask, &self.base_max, &w)
            .with_context(|| self.diverged(self.opt.step))?;
        self.save_weights(&self.out, &w)?;
        let summary = serde_json::json!({
            "steps": self.opt.step,
            "heads": self.heads,
            "slices": self.mask.slices.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "trainable_parameters": self.trainable_numel(),
            "lora": self.cfg.lora,
            "config": self.cfg,
            "history": self.history,
            "model": model_summary(&self.model.cfg),
        });
        write_json(&self.out.join("tune_summary.json"), &summary)?;
        Ok(self.out.clone())
    }
}

/// The benchmark's SPT step: `batch` sequences of `seq` random tokens, the first `k` heads
/// (layer-major order) tuned with the default projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchStep {
    pub k: usize,
    pub batch: usize,
    pub seq: usize,
    /// Positions at the end of each sequence that carry loss (SPT's final assistant turn);
    /// 0: every position with a next token (a language-model step, HF `labels = input_ids`).
    pub loss_tokens: usize,
    pub act_memory: ActMemory,
}

impl BenchStep {
    /// `batch` x `seq` tokens, `k` heads, loss at every position, activation memory auto.
    pub fn new(k: usize, batch: usize, seq: usize) -> Self {
        Self {
            k,
            batch,
            seq,
            loss_tokens: 0,
            act_memory: ActMemory::Auto,
        }
    }

    /// A trainer for this step on `model` (nothing is written: no checkpoints).
    pub fn trainer<B: TrainBackend>(&self, model: Model<B>) -> Result<Trainer<B>> {
        use rand::Rng;
        let k = self.k;
        let heads: Vec<HeadId> = model.all_heads().into_iter().take(k).collect();
        ensure!(heads.len() == k, "the model has fewer than {k} heads");
        ensure!(self.seq >= 2, "a training sequence needs at least 2 tokens");
        let mask = Mask::heads(
            &model.cfg,
            &heads,
            crate::tune::mask::HeadProjs::default_for(&model.cfg),
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let v = model.cfg.vocab_size as u32;
        // Targets at the last `loss_tokens` positions that have a next token.
        let first = match self.loss_tokens {
            0 => 0,
            n => (self.seq - 1).saturating_sub(n),
        };
        let data: Vec<TrainSeq> = (0..self.batch)
            .map(|_| {
                let ids: Vec<u32> = (0..self.seq).map(|_| rng.gen_range(0..v)).collect();
                let targets = (0..self.seq)
                    .map(|t| (t >= first).then(|| ids.get(t + 1).copied()).flatten())
                    .collect();
                TrainSeq::new(ids, targets)
            })
            .collect();
        let cfg = TuneConfig {
            steps: 2,
            batch: self.batch,
            progress: false,
            checkpoint_every: 0,
            act_memory: self.act_memory,
            ..Default::default()
        };
        let tmp = std::env::temp_dir().join("pinpoint-bench-unused");
        Trainer::new(model, mask, heads, data, cfg, &tmp)
    }

    /// Seconds of one update on `model`, after one warm-up update (first touches of every
    /// buffer).
    pub fn time<B: TrainBackend>(&self, model: Model<B>) -> Result<f64> {
        let mut t = self.trainer(model)?;
        t.step()?;
        t.model.backend.synchronize()?;
        let t0 = Instant::now();
        t.step()?;
        t.model.backend.synchronize()?;
        Ok(t0.elapsed().as_secs_f64())
    }
}
