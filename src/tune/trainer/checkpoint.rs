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
    /// SHA-256 of the tokenized data (absent in older checkpoints, which are refused).
    #[serde(default)]
    data_sha256: Option<String>,
    /// Content digest of the base model's weights ([`crate::model::digest`]).
    #[serde(default)]
    base_weights: Option<String>,
    /// Sequences per forward/backward (it changes the sums' order, so the result).
    #[serde(default)]
    micro_batch: Option<usize>,
    /// `--max-len` of the tokenized data.
    #[serde(default)]
    max_len: Option<usize>,
    /// `history`'s loss, lr and grad-norm as bit patterns (f64, f32, f64): JSON decimals
    /// do not always parse back to the same f64, these do.
    #[serde(default)]
    history_bits: Vec<[u64; 3]>,
}

/// Metadata key of `tune_state.safetensors` holding the SHA-256 of `tune_state.json`: the
/// two files of a checkpoint vouch for each other, so an edited or truncated state is seen.
const STATE_JSON_SHA: &str = "tune_state_json_sha256";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

impl<B: TrainBackend> Trainer<B> {
    /// Save `w` as a model folder: every tensor in `--save-dtype` when given, else each in
    /// the dtype the base model stores it in (a mixed f16/f32 model stays mixed, and
    /// frozen tensors keep their bits).
    pub(super) fn save_weights(&self, dir: &Path, w: &ModelWeights<HostTensor>) -> Result<()> {
        let side = self.model.dir.as_deref();
        if let Some(d) = self.cfg.save_dtype {
            return save_model_dir(dir, &self.model.cfg, w, d, side);
        }
        let own = self.model.dtype;
        let stored = side.map(stored_dtypes).unwrap_or_default();
        let dtype_of = |n: &str| stored.get(n).copied().unwrap_or(own);
        save_model_dir_as(dir, &self.model.cfg, w, &dtype_of, own, side)
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Write a checkpoint of the current step; returns its directory.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let step = self.opt.step;
        let root = self.checkpoints_dir();
        let name = checkpoint_name(step);
        let dir = root.join(&name);
        let w = self.final_weights()?;
        crate::model::checkpoint::weights_finite(&w).with_context(|| self.diverged(step))?;
        if step == self.cfg.steps {
            // The final weights: refuse exploded ones before they become a checkpoint.
            super::diverge::check_growth(&self.mask, &self.base_max, &w)
                .with_context(|| self.diverged(step))?;
        }
        let tmp = root.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        self.save_weights(&tmp, &w)?;
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
            base_weights: self.base_digest.clone(),
            micro_batch: Some(self.cfg.micro_batch),
            max_len: self.cfg.max_len,
            history_bits: history_bits(&self.history),
        };
        let text = serde_json::to_string_pretty(&state)?;
        atomic_write(&tmp.join("tune_state.json"), text.as_bytes())?;
        let refs: Vec<(String, &HostTensor)> = named.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors_with(
            &tmp.join("tune_state.safetensors"),
            &refs,
            &|_| StoreDtype::F32,
            &[(STATE_JSON_SHA, sha256_hex(text.as_bytes()))],
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        atomic_write(&root.join("latest"), name.as_bytes())?;
        self.last_checkpoint = Some(dir.clone());
        self.prune_checkpoints(&root, step)?;
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

    /// Delete the oldest of pinpoint's own checkpoints (names exactly `step-` and six or
    /// more digits, as [`checkpoint_name`] writes) so that `keep_checkpoints` are left, none
    /// newer than `keep_newest`. Any other name (a user's `step-000002-keep`) is never touched.
    fn prune_checkpoints(&self, root: &Path, keep_newest: usize) -> Result<()> {
        let mut steps: Vec<usize> = std::fs::read_dir(root)
            .with_context(|| format!("reading {}", root.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| checkpoint_step(&n))
            .filter(|&s| s <= keep_newest)
            .collect();
        steps.sort_unstable();
        let drop = steps.len().saturating_sub(self.cfg.keep_checkpoints);
        for &s in &steps[..drop] {
            let n = checkpoint_name(s);
            std::fs::remove_dir_all(root.join(&n))
                .with_context(|| format!("removing old checkpoint {n}"))?;
        }
        Ok(())
    }

    /// The newest complete checkpoint under `out`, if any. `checkpoints/latest` must name one
    /// of pinpoint's checkpoint folders (`step-NNNNNN`); an empty or other name is an error
    /// naming the file.
    pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
        let f = out.join("checkpoints").join("latest");
        if !f.exists() {
            return Ok(None);
        }
        let name =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = name.trim();
        ensure!(
            !name.is_empty(),
            "{} is empty (it should name the newest checkpoint folder, e.g. step-000020): the checkpoint write was cut short or the file was edited; restore it or choose another --out",
            f.display()
        );
        ensure!(
            checkpoint_step(name).is_some_and(|s| checkpoint_name(s) == name),
            "{} names {name:?}, which is not a pinpoint checkpoint folder (step-NNNNNN)",
            f.display()
        );
        let dir = out.join("checkpoints").join(name);
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
        let sp = dir.join("tune_state.safetensors");
        match safetensors_metadata(&sp)?.get(STATE_JSON_SHA) {
            Some(h) if *h == sha256_hex(text.as_bytes()) => {}
            Some(_) => bail!(
                "{} was edited or cut short after it was written (it no longer matches the digest that {} records); restore it, or choose another --out",
                p.display(),
                sp.display()
            ),
            None => bail!(
                "{} records no digest of {} (a checkpoint of an older pinpoint?), so the state cannot be checked; start again in another --out",
                sp.display(),
                p.display()
            ),
        }
        let st: StateJson = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tune state", p.display()))?;
        ensure!(st.format == 1, "unknown tune state format {}", st.format);
        consistent(&st, dir).with_context(|| format!("{} is inconsistent", p.display()))?;
        self.check_same_run(&st)?;
        let mut t = load_tensors(&[sp])?;
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
        self.opt.step = st.step;
        self.history = restored_history(&st.history, &st.history_bits);
        self.write_masters()?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    /// Refuse a checkpoint of another run: another base model (by content), other slices,
    /// data or settings. Each error names the one thing that differs, with both values.
    fn check_same_run(&self, st: &StateJson) -> Result<()> {
        ensure!(
            st.model == model_summary(&self.model.cfg),
            "the checkpoint is of another model: {}",
            st.model
        );
        let here = self.model.dir.as_deref().map(|d| d.display().to_string());
        let here = here.unwrap_or_else(|| "the model".into());
        match (&st.base_weights, &self.base_digest) {
            (Some(a), Some(b)) => ensure!(
                a == b,
                "--model {here} holds other weights than the run started from (content digest {a} in the checkpoint, {b} now): another model of the same shape, or weights changed in place; resume with the model the run started from, or choose another --out"
            ),
            (None, _) => bail!(
                "the checkpoint records no digest of its base model's weights, so it cannot be checked against --model {here}; start again in another --out"
            ),
            (Some(_), None) => bail!(
                "the checkpoint records its base model's weights, but {here} was not loaded from a folder, so they cannot be compared"
            ),
        }
        ensure!(
            st.mask == self.mask,
            "the checkpoint tuned other slices than this run (other heads or --proj)"
        );
        ensure!(
            st.lora == self.cfg.lora,
            "the checkpoint's LoRA settings differ from this run's"
        );
        let opt = |v: Option<usize>| v.map_or("none".to_string(), |x| x.to_string());
        let mut diffs = vec![];
        let mut differ = |flag: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{flag} {a} in the checkpoint, {b} now"));
            }
        };
        differ("--max-len", opt(st.max_len), opt(self.cfg.max_len));
        differ("--seed", st.seed.to_string(), self.cfg.seed.to_string());
        differ("--batch", st.batch.to_string(), self.cfg.batch.to_string());
        differ(
            "--micro-batch",
            opt(st.micro_batch),
            self.cfg.micro_batch.to_string(),
        );
        differ(
            "--authors-decay",
            st.authors_decay.to_string(),
            self.cfg.authors_decay.to_string(),
        );
        diffs.extend(optim_diffs(&st.optim, &self.opt.cfg));
        ensure!(
            diffs.is_empty(),
            "the checkpoint was trained with other settings: {}; resume with the same flags, or choose another --out",
            diffs.join(", ")
        );
        let Some(h) = &st.data_sha256 else {
            bail!("the checkpoint records no hash of its training data, so --data cannot be checked against it; start again in another --out");
        };
        ensure!(
            st.n_examples == self.data.len() && *h == data_fingerprint(&self.data),
            "the checkpoint was trained on other data ({} examples, tokenized data hash {h}; this run has {} examples, hash {}); resume with the same --data, or choose another --out",
            st.n_examples,
            self.data.len(),
            data_fingerprint(&self.data)
        );
        Ok(())
    }
}

/// A state that agrees with itself: its folder is named for its step, one history entry per
/// update (numbered 1..=step) with its bit patterns, the data cursor at `step * batch`.
fn consistent(st: &StateJson, dir: &Path) -> Result<()> {
    let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ensure!(
        checkpoint_step(folder) == Some(st.step),
        "its step {} does not match its folder {folder}",
        st.step
    );
    ensure!(
        st.step >= 1 && st.step <= st.optim.total_steps,
        "its step {} is outside 1..={} (its --steps)",
        st.step,
        st.optim.total_steps
    );
    ensure!(
        st.history.len() == st.step,
        "it holds {} history entries for {} steps (truncated or edited)",
        st.history.len(),
        st.step
    );
    if let Some((i, h)) = st.history.iter().enumerate().find(|(i, h)| h.step != i + 1) {
        bail!("history entry {} is numbered step {}", i + 1, h.step);
    }
    ensure!(
        st.data_cursor == st.step * st.batch,
        "its data cursor {} is not step {} x batch {}",
        st.data_cursor,
        st.step,
        st.batch
    );
    ensure!(
        st.history_bits.len() == st.history.len(),
        "it holds {} history bit patterns for {} history entries",
        st.history_bits.len(),
        st.history.len()
    );
    let near = |a: f64, b: f64| a == b || (a - b).abs() <= a.abs().max(b.abs()) * 1e-6;
    for (h, b) in st.history.iter().zip(&st.history_bits) {
        let lr_ok = u32::try_from(b[1]).is_ok_and(|x| near(f32::from_bits(x).into(), h.lr.into()));
        ensure!(
            lr_ok && near(f64::from_bits(b[0]), h.loss) && near(f64::from_bits(b[2]), h.grad_norm),
            "step {}: the history's loss/lr/grad-norm disagree with their bit patterns",
            h.step
        );
    }
    Ok(())
}

/// Loss, lr and grad-norm of each step as bit patterns (f64, f32 widened, f64).
fn history_bits(history: &[StepLog]) -> Vec<[u64; 3]> {
    history
        .iter()
        .map(|h| {
            [
                h.loss.to_bits(),
                h.lr.to_bits().into(),
                h.grad_norm.to_bits(),
            ]
        })
        .collect()
}

/// The history with loss, lr and grad-norm taken from their bit patterns: exactly the
/// values the uninterrupted run computed.
fn restored_history(history: &[StepLog], bits: &[[u64; 3]]) -> Vec<StepLog> {
    history
        .iter()
        .zip(bits)
        .map(|(h, b)| StepLog {
            loss: f64::from_bits(b[0]),
            lr: f32::from_bits(b[1] as u32),
            grad_norm: f64::from_bits(b[2]),
            ..*h
        })
        .collect()
}

/// The folder name of the checkpoint after `step` updates.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// The step of a checkpoint folder name, only for names [`checkpoint_name`] writes.
pub fn checkpoint_step(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: usize = digits.parse().ok()?;
    (checkpoint_name(step) == name).then_some(step)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_through_json_bit_for_bit() {
        // serde_json prints the shortest decimal of each f64, but its default parser returns
        // the neighbouring f64 for about 8% of them (1.7546217903306627 comes back as
        // 1.754621790330663): the ulp a resumed history lost. The bit patterns keep it.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 10.0
        };
        let logs: Vec<StepLog> = (0..2000)
            .map(|i| StepLog {
                step: i + 1,
                loss: if i == 0 {
                    1.754_621_790_330_662_7
                } else {
                    next()
                },
                lr: next() as f32 * 1e-4,
                grad_norm: next(),
                tokens: 3,
                seconds: 0.5,
            })
            .collect();
        let text = serde_json::to_string(&(&logs, history_bits(&logs))).unwrap();
        let (back, bits): (Vec<StepLog>, Vec<[u64; 3]>) = serde_json::from_str(&text).unwrap();
        let plain_lost = back
            .iter()
            .zip(&logs)
            .filter(|(a, b)| a.loss.to_bits() != b.loss.to_bits())
            .count();
        eprintln!(
            "{plain_lost} of {} losses lost an ulp through plain JSON",
            logs.len()
        );
        let restored = restored_history(&back, &bits);
        for (a, b) in restored.iter().zip(&logs) {
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "loss of step {}",
                b.step
            );
            assert_eq!(a.lr.to_bits(), b.lr.to_bits(), "lr of step {}", b.step);
            assert_eq!(
                a.grad_norm.to_bits(),
                b.grad_norm.to_bits(),
                "grad norm of step {}",
                b.step
            );
        }
    }

    #[test]
    fn only_pinpoints_own_checkpoint_names_count() {
        assert_eq!(checkpoint_step("step-000002"), Some(2));
        assert_eq!(checkpoint_step("step-1234567"), Some(1_234_567));
        for n in [
            "step-000002-keep",
            "step-2",
            "step-00000x",
            "step-0000002",
            "xstep-000002",
            "step-",
        ] {
            assert_eq!(checkpoint_step(n), None, "{n}");
        }
    }
}
