//! Training sequences: token ids with the token each position must predict, and for a
//! retain sequence the original model's next-token distributions it is scored against.

/// One training sequence: `targets[t]` is the token the logits at position t must predict
/// (`None`: no loss there). HF's `labels` are shifted: `targets[t] = labels[t + 1]`.
///
/// A *retain* sequence (`retain`) is scored at its target rows by KL(original ‖ model)
/// against `teacher` (one [`SoftTarget`] per target row, in row order: the original
/// model's next-token distribution there) instead of by cross-entropy on the tokens: the
/// targets only say which rows count. It keeps behaviour the tuning should not change.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSeq {
    pub ids: Vec<u32>,
    pub targets: Vec<Option<u32>>,
    pub retain: bool,
    pub teacher: Vec<SoftTarget>,
}

/// A next-token distribution cut to its `k` most likely tokens: `ids` with `probs`
/// (descending); the remaining mass `1 - sum(probs)` is one bucket for every other token.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftTarget {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
}

impl SoftTarget {
    /// The top `k` of `softmax(logits)` (ties broken by the lower id).
    pub fn top_k(logits: &[f32], k: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(logits.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < order.len() {
            order.select_nth_unstable_by(k, by_logit);
            order.truncate(k);
        }
        order.sort_by(by_logit);
        let probs = order
            .iter()
            .map(|&i| (((logits[i as usize] - max) as f64).exp() / sum) as f32)
            .collect();
        Self { ids: order, probs }
    }
}

impl TrainSeq {
    /// A cross-entropy sequence.
    pub fn new(ids: Vec<u32>, targets: Vec<Option<u32>>) -> Self {
        Self {
            ids,
            targets,
            retain: false,
            teacher: vec![],
        }
    }
    /// From HF `input_ids` and `labels` (-100 = ignored), shifting as `ForCausalLMLoss`.
    pub fn from_hf_labels(ids: &[u32], labels: &[i64]) -> Self {
        let targets = (0..ids.len())
            .map(|t| match labels.get(t + 1) {
                Some(&l) if l >= 0 => Some(l as u32),
                _ => None,
            })
            .collect();
        Self::new(ids.to_vec(), targets)
    }
    pub fn n_targets(&self) -> usize {
        self.targets.iter().flatten().count()
    }
}
