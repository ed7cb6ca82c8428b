//! AdamW on the tuned slices only: f32 master copies and moments exist for trainable
//! scalars alone (memory grows with K heads, not with the model). Schedule as HF's
//! `get_polynomial_decay_schedule_with_warmup`; clipping as `torch.nn.utils.clip_grad_norm_`;
//! update as `torch.optim.AdamW` (decoupled weight decay).

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate (authors: 3e-5).
    pub lr: f32,
    /// Learning rate at the end of the decay (authors: 1e-7).
    pub lr_end: f32,
    pub warmup_steps: usize,
    /// Steps of the whole run (the decay reaches `lr_end` there).
    pub total_steps: usize,
    /// Polynomial power of the decay (authors: 1, linear).
    pub power: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (authors: 0.1).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 3e-5,
            lr_end: 1e-7,
            warmup_steps: 0,
            total_steps: 120,
            power: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
        }
    }
}

impl AdamWConfig {
    /// Learning rate of update `step` (0-based), as HF's polynomial schedule with warm-up:
    /// `lr * step / warmup` during warm-up (so update 0 has lr 0 when warm-up > 0), then
    /// `(lr - lr_end) * (1 - (step - warmup) / (total - warmup))^power + lr_end`.
    pub fn lr_at(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps.max(1) as f32;
        }
        if step > self.total_steps || self.total_steps <= self.warmup_steps {
            return self.lr_end;
        }
        let decay_steps = (self.total_steps - self.warmup_steps) as f32;
        let remaining = 1.0 - (step - self.warmup_steps) as f32 / decay_steps;
        (self.lr - self.lr_end) * remaining.powf(self.power) + self.lr_end
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lr.is_finite() && self.lr >= 0.0,
            "learning rate {} is not a non-negative number",
            self.lr
        );
        ensure!(
            self.lr_end.is_finite() && self.lr_end >= 0.0,
            "end learning rate {} is invalid",
            self.lr_end
        );
        ensure!(
            (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
            "betas must lie in [0, 1)"
        );
        ensure!(self.eps > 0.0, "eps must be positive");
        if let Some(c) = self.max_grad_norm {
            ensure!(c > 0.0, "max grad norm must be positive");
        }
        Ok(())
    }
}

/// Optimizer state of one trainable buffer (a mask slice or a LoRA factor).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    /// f32 master copy of the trainable values.
    pub master: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Updates done so far.
    pub step: usize,
    pub states: Vec<ParamState>,
}

impl AdamW {
    /// State for buffers starting at `masters` (their current values).
    pub fn new(cfg: AdamWConfig, masters: Vec<Vec<f32>>) -> Result<Self> {
        cfg.validate()?;
        let states = masters
            .into_iter()
            .map(|m| ParamState {
                m: vec![0.0; m.len()],
                v: vec![0.0; m.len()],
                master: m,
            })
            .collect();
        Ok(Self {
            cfg,
            step: 0,
            states,
        })
    }

    /// Scalars of optimizer state (master + m + v).
    pub fn state_numel(&self) -> usize {
        self.states
            .iter()
            .map(|s| s.master.len() + s.m.len() + s.v.len())
            .sum()
    }

    /// Global L2 norm of `grads` (f64).
    pub fn grad_norm(grads: &[&[f32]]) -> f64 {
        grads
            .iter()
            .flat_map(|g| g.iter())
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt()
    }

    /// One update with `grads` (one per state, same lengths). Clips by the global norm,
    /// then AdamW. Refuses a non-finite gradient norm without touching any state.
    pub fn update(&mut self, grads: &[&[f32]]) -> Result<StepInfo> {
        ensure!(
            grads.len() == self.states.len(),
            "{} gradients for {} buffers",
            grads.len(),
            self.states.len()
        );
        for (g, s) in grads.iter().zip(&self.states) {
            ensure!(
                g.len() == s.master.len(),
                "gradient of {} for a buffer of {}",
                g.len(),
                s.master.len()
            );
        }
        let norm = Self::grad_norm(grads);
        if !norm.is_finite() {
            bail!("gradient norm is {norm}");
        }
        let clip = match self.cfg.max_grad_norm {
            Some(c) if norm > c as f64 => (c as f64 / (norm + 1e-6)) as f32,
            _ => 1.0,
        };
        let c = self.cfg;
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let decay = 1.0 - lr * c.weight_decay;
        for (s, g) in self.states.iter_mut().zip(grads) {
            for i in 0..g.len() {
                let gi = g[i] * clip;
                s.m[i] = c.beta1 * s.m[i] + (1.0 - c.beta1) * gi;
                s.v[i] = c.beta2 * s.v[i] + (1.0 - c.beta2) * gi * gi;
                let denom = s.v[i].sqrt() / bc2_sqrt + c.eps;
                s.master[i] = s.master[i] * decay - step_size * s.m[i] / denom;
            }
        }
        Ok(StepInfo {
            lr,
            grad_norm: norm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_hf_polynomial_decay() {
        let c = AdamWConfig {
            lr: 1.0,
            lr_end: 0.1,
            warmup_steps: 2,
            total_steps: 6,
            ..Default::default()
        };
        let got: Vec<f32> = (0..8).map(|s| c.lr_at(s)).collect();
        let want = [0.0, 0.5, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn one_update_matches_torch_adamw_formula() {
        // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), one step
        // from w = [1, -2] with grad [0.5, 0.0]: w = w * (1 - 0.01) - 0.1 * m_hat / (sqrt(v_hat) + eps)
        let c = AdamWConfig {
            lr: 0.1,
            lr_end: 0.1,
            total_steps: 10,
            max_grad_norm: None,
            ..Default::default()
        };
        let mut o = AdamW::new(c, vec![vec![1.0, -2.0]]).unwrap();
        o.update(&[&[0.5, 0.0]]).unwrap();
        let w = &o.states[0].master;
        assert!(
            (w[0] - (0.99 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-6,
            "{w:?}"
        );
        assert!((w[1] - (-2.0 * 0.99)).abs() < 1e-6, "{w:?}");
        assert!(o.update(&[&[f32::NAN, 0.0]]).is_err());
        assert_eq!(o.step, 1);
    }
}
