//! The trainer's checkpoints: write one per interval (weights, optimizer state, step, data
//! cursor), keep the newest, find the latest, and resume from it bit for bit.

use super::*;

#[derive(Serialize, Deserialize)]
struct StateJson {
    format: u32,
    step: usize,
    seed: u64,
    /// Examples consumed so far (`step * batch`).
    data_cursor: usize,
    n_examples: usize,
    batch: usize,
    heads: Vec<HeadId>,
    mask: Mask,
    lora: Option<LoraConfig>,
    authors_decay: bool,
    optim: AdamWConfig,
    history: Vec<StepLog>,
    model: serde_json::Value,
    /// SHA-256 of the tokenized data (absent in older checkpoints).
    #[serde(default)]
    data_sha256: Option<String>,
}

impl<B: TrainBackend> Trainer<B> {
    pub(super) fn save_dtype(&self) -> StoreDtype {
        self.cfg.save_dtype.unwrap_or(self.model.dtype)
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Write a checkpoint of the current step; returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let step = self.opt.step;
        let root = self.checkpoints_dir();
        let name = format!("step-{step:06}");
        let dir = root.join(&name);
        let w = self.final_weights()?;
        crate::model::checkpoint::weights_finite(&w).with_context(|| self.diverged(step))?;
        if step == self.cfg.steps {
            // The final weights: refuse exploded ones before they become a checkpoint.
            self.check_growth(&w).with_context(|| self.diverged(step))?;
        }
        let tmp = root.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        save_model_dir(
            &tmp,
            &self.model.cfg,
            &w,
            self.save_dtype(),
            self.model.dir.as_deref(),
        )?;
        // Optimizer state of the tuned slices only.
        let mut named: Vec<(String, HostTensor)> = vec![];
        for (i, s) in self.host_states()?.iter().enumerate() {
            let n = s.master.len();
            named.push((
                format!("state.{i}.master"),
                HostTensor::new(vec![n], s.master.clone()),
            ));
            named.push((
                format!("state.{i}.m"),
                HostTensor::new(vec![n], s.m.clone()),
            ));
            named.push((
                format!("state.{i}.v"),
                HostTensor::new(vec![n], s.v.clone()),
            ));
        }
        if self.cfg.authors_decay {
            for p in self.mask.partial_params() {
                let t = self
                    .model
                    .backend
                    .download(param(&self.model.weights, p)?)?;
                named.push((format!("decayed.{}", p.hf_name()), t));
            }
        }
        let refs: Vec<(String, &HostTensor)> = named.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors(&tmp.join("tune_state.safetensors"), &refs, StoreDtype::F32)?;
        let state = StateJson {
            format: 1,
            step,
            seed: self.cfg.seed,
            data_cursor: step * self.cfg.batch,
            n_examples: self.data.len(),
            batch: self.cfg.batch,
            heads: self.heads.clone(),
            mask: self.mask.clone(),
            lora: self.cfg.lora.clone(),
            authors_decay: self.cfg.authors_decay,
            optim: self.opt.cfg,
            history: self.history.clone(),
            model: model_summary(&self.model.cfg),
            data_sha256: Some(data_fingerprint(&self.data)),
        };
        write_json(&tmp.join("tune_state.json"), &state)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        atomic_write(&root.join("latest"), name.as_bytes())?;
        self.last_checkpoint = Some(dir.clone());
        self.prune_checkpoints(&root, &name)?;
        Ok(dir)
    }

    /// Context of a non-finite weight found after update `step`.
    pub(super) fn diverged(&self, step: usize) -> String {
        let last = match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no good checkpoint was written".to_string(),
        };
        format!("step {step}: training diverged (try a lower --lr); nothing was saved for this step, {last}")
    }

    fn prune_checkpoints(&self, root: &Path, keep_newest: &str) -> Result<()> {
        let mut names: Vec<String> = std::fs::read_dir(root)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-") && n.as_str() <= keep_newest)
            .collect();
        names.sort();
        let drop = names.len().saturating_sub(self.cfg.keep_checkpoints);
        for n in &names[..drop] {
            std::fs::remove_dir_all(root.join(n))
                .with_context(|| format!("removing old checkpoint {n}"))?;
        }
        Ok(())
    }

    /// The newest complete checkpoint under `out`, if any.
    pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
        let f = out.join("checkpoints").join("latest");
        if !f.exists() {
            return Ok(None);
        }
        let name =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let dir = out.join("checkpoints").join(name.trim());
        ensure!(
            dir.is_dir(),
            "{} names {}, which does not exist",
            f.display(),
            dir.display()
        );
        Ok(Some(dir))
    }

    /// Continue from the newest checkpoint under `out` (the model must be the base model
    /// the run started from). Returns false when there is none.
    pub fn resume(&mut self) -> Result<bool> {
        let Some(dir) = Self::latest_checkpoint(&self.out)? else {
            return Ok(false);
        };
        self.load_state(&dir)
            .with_context(|| format!("resuming from {}", dir.display()))?;
        Ok(true)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let p = dir.join("tune_state.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let st: StateJson = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tune state", p.display()))?;
        ensure!(st.format == 1, "unknown tune state format {}", st.format);
        ensure!(
            st.model == model_summary(&self.model.cfg),
            "the checkpoint is of another model: {}",
            st.model
        );
        ensure!(
            st.mask == self.mask,
            "the checkpoint tuned other slices than this run (other heads or --proj)"
        );
        ensure!(
            st.lora == self.cfg.lora,
            "the checkpoint's LoRA settings differ from this run's"
        );
        ensure!(
            st.seed == self.cfg.seed
                && st.batch == self.cfg.batch
                && st.n_examples == self.data.len(),
            "the checkpoint used seed {} / batch {} / {} examples; this run has {} / {} / {}",
            st.seed,
            st.batch,
            st.n_examples,
            self.cfg.seed,
            self.cfg.batch,
            self.data.len()
        );
        ensure!(
            st.authors_decay == self.cfg.authors_decay,
            "the checkpoint's authors_decay setting differs"
        );
        let mut t = load_tensors(&[dir.join("tune_state.safetensors")])?;
        for i in 0..self.states.len() {
            let n = self.state_lens[i];
            let host = ParamState {
                master: t.take(&format!("state.{i}.master"), &[n])?.data,
                m: t.take(&format!("state.{i}.m"), &[n])?.data,
                v: t.take(&format!("state.{i}.v"), &[n])?.data,
            };
            self.model.backend.opt_write(&mut self.states[i], &host)?;
        }
        if self.cfg.authors_decay {
            for p in self.mask.partial_params() {
                let shape = p.shape(&self.model.cfg);
                let w = t.take(&format!("decayed.{}", p.hf_name()), &shape)?;
                let dst = param_mut(&mut self.model.weights, p)?;
                self.model.backend.write_region(dst, Region::Full, &w)?;
            }
        }
        let diffs = optim_diffs(&st.optim, &self.opt.cfg);
        ensure!(
            diffs.is_empty(),
            "the checkpoint was trained with other settings: {}; resume with the same flags, or choose another --out",
            diffs.join(", ")
        );
        if let Some(h) = &st.data_sha256 {
            ensure!(
                *h == data_fingerprint(&self.data),
                "the checkpoint was trained on other data (its tokenized data hash {h} differs from this run's); resume with the same --data, or choose another --out"
            );
        }
        self.opt.step = st.step;
        self.history = st.history;
        self.write_masters()?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }
}

/// SHA-256 of tokenized training data (ids and targets, in order): what a resume depends on.
pub fn data_fingerprint(data: &[TrainSeq]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for s in data {
        h.update((s.ids.len() as u64).to_le_bytes());
        for id in &s.ids {
            h.update(id.to_le_bytes());
        }
        for t in &s.targets {
            h.update(t.map_or(u64::MAX, |x| x as u64).to_le_bytes());
        }
        // The loss kind (cross-entropy or retain) is part of the data.
        h.update([u8::from(s.retain)]);
    }
    hex::encode(h.finalize())
}

/// The settings in which a checkpoint's optimizer differs from this run's, named as flags.
fn optim_diffs(ckpt: &AdamWConfig, run: &AdamWConfig) -> Vec<String> {
    let mut d = vec![];
    let mut f = |flag: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{flag} {a} in the checkpoint, {b} now"));
        }
    };
    f("--lr", ckpt.lr.to_string(), run.lr.to_string());
    f("--lr-end", ckpt.lr_end.to_string(), run.lr_end.to_string());
    f(
        "--warmup",
        ckpt.warmup_steps.to_string(),
        run.warmup_steps.to_string(),
    );
    f(
        "--steps",
        ckpt.total_steps.to_string(),
        run.total_steps.to_string(),
    );
    f("--power", ckpt.power.to_string(), run.power.to_string());
    f(
        "--weight-decay",
        ckpt.weight_decay.to_string(),
        run.weight_decay.to_string(),
    );
    let clip = |c: Option<f32>| c.map_or("off".to_string(), |x| x.to_string());
    f(
        "--max-grad-norm",
        clip(ckpt.max_grad_norm),
        clip(run.max_grad_norm),
    );
    f("beta1", ckpt.beta1.to_string(), run.beta1.to_string());
    f("beta2", ckpt.beta2.to_string(), run.beta2.to_string());
    f("eps", ckpt.eps.to_string(), run.eps.to_string());
    d
}
