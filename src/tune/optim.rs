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

pub use crate::backend::{AdamStep, ParamState};

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The AdamW schedule and step count. The per-buffer state (f32 master and moments) lives
/// where the weights live (`TrainBackend::OptState`); this computes each update's scalars.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Updates done so far.
    pub step: usize,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, step: 0 })
    }

    /// Global L2 norm from per-buffer sums of squares.
    pub fn norm_of(sum_squares: &[f64]) -> f64 {
        sum_squares.iter().sum::<f64>().sqrt()
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

    /// The scalars of the next update for global gradient norm `norm` (clipping as
    /// `clip_grad_norm_`), and advance the step count. Refuses a non-finite norm without
    /// advancing.
    pub fn next(&mut self, norm: f64) -> Result<(AdamStep, StepInfo)> {
        if !norm.is_finite() {
            bail!("gradient norm is {norm}");
        }
        let c = self.cfg;
        let clip = match c.max_grad_norm {
            Some(m) if norm > m as f64 => (m as f64 / (norm + 1e-6)) as f32,
            _ => 1.0,
        };
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let a = AdamStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size: lr / (1.0 - c.beta1.powi(t)),
            bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            decay: 1.0 - lr * c.weight_decay,
            clip,
        };
        Ok((
            a,
            StepInfo {
                lr,
                grad_norm: norm,
            },
        ))
    }

    /// One update of host buffers `states` by `grads` (same lengths): the reference path.
    pub fn update(&mut self, states: &mut [ParamState], grads: &[&[f32]]) -> Result<StepInfo> {
        ensure!(
            grads.len() == states.len(),
            "{} gradients for {} buffers",
            grads.len(),
            states.len()
        );
        for (g, s) in grads.iter().zip(states.iter()) {
            ensure!(
                g.len() == s.master.len(),
                "gradient of {} for a buffer of {}",
                g.len(),
                s.master.len()
            );
        }
        let (a, info) = self.next(Self::grad_norm(grads))?;
        for (s, g) in states.iter_mut().zip(grads) {
            crate::backend::host::adamw(&a, s, g);
        }
        Ok(info)
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
        let mut o = AdamW::new(c).unwrap();
        let mut st = vec![ParamState::new(vec![1.0, -2.0])];
        o.update(&mut st, &[&[0.5, 0.0]]).unwrap();
        let w = &st[0].master;
        assert!(
            (w[0] - (0.99 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-6,
            "{w:?}"
        );
        assert!((w[1] - (-2.0 * 0.99)).abs() < 1e-6, "{w:?}");
        assert!(o.update(&mut st, &[&[f32::NAN, 0.0]]).is_err());
        assert_eq!(o.step, 1);
    }
}
