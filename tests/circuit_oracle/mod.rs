//! The literal oracle of an edge score: patched forwards by taps, nothing batched.
//!
//! Edge s -> r via c on pair p: forward 1 runs X_r with s's last-position output set to
//! X_c's (z slice or MLP output) and every other component between s and r held at its
//! clean X_r output (attention and MLP outputs of the layers in between), and captures r's
//! channel c at the last position (for the logits: reads them there). Forward 2 runs X_r
//! with that channel patched in (for a GQA key/value, the group's other heads reset to
//! their clean z so only r uses it), later heads frozen (attention inputs at the last
//! position reset to X_r's), MLPs recomputed, and reads the label logits.
//!
//! Beside each label logit y = w . h (h the final normed residual at the last position,
//! w the label's unembedding row) it gives `cond = sum_i |w_i h_i|`: f32 rounding of the
//! residual and of the sum moves y by a multiple of `f32::EPSILON * cond`, whatever |y| is
//! (the tests' rounding floor, `docs/circuit.md`).
#![allow(dead_code)]

use pinpoint::backend::Backend;
use pinpoint::diagnose::circuit::{Channel, Edge, Receiver, Sender};
use pinpoint::diagnose::metric::Metric;
use pinpoint::diagnose::pairs::TokenPair;
use pinpoint::heads::{ForwardOutput, HookPoint, Patch, Positions, Taps};
use pinpoint::Model;

/// X_r's and X_c's last-position captures of every layer: (ref, cf) per point.
pub struct Clean {
    pub ref_last: usize,
    pub get: std::collections::BTreeMap<HookPoint, (Vec<f32>, Vec<f32>)>,
    pub ref_labels: (f64, f64),
    /// `cond` of the clean run's label logits (see the module doc).
    pub ref_cond: (f64, f64),
    unembed: Unembed,
}

/// Label logits of a patched run and their `cond` (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    pub y: (f64, f64),
    pub cond: (f64, f64),
}

/// The final norm's weight `[d]` and the two labels' unembedding rows `[d]`.
struct Unembed {
    norm: Vec<f32>,
    eps: f64,
    rows: [Vec<f32>; 2],
}

impl Unembed {
    fn new<B: Backend>(m: &Model<B>, metric: &Metric) -> Self {
        let (b, w) = (&m.backend, &m.weights);
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let ids = [metric.syc as usize, metric.anti as usize];
        let rows = b
            .download(&b.gather_rows(head, &ids).unwrap())
            .unwrap()
            .data;
        let d = m.cfg.hidden_size;
        Unembed {
            norm: b.download(&w.final_norm).unwrap().data,
            eps: m.cfg.rms_norm_eps,
            rows: [rows[..d].to_vec(), rows[d..].to_vec()],
        }
    }

    /// `cond` of both labels for the final residual `x [d]` (f64).
    fn cond(&self, x: &[f32]) -> (f64, f64) {
        let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + self.eps).sqrt();
        let c = |w: &[f32]| -> f64 {
            x.iter()
                .zip(&self.norm)
                .zip(w)
                .map(|((&x, &g), &w)| (x as f64 * inv * g as f64 * w as f64).abs())
                .sum()
        };
        (c(&self.rows[0]), c(&self.rows[1]))
    }

    /// The labels of a forward that captured [`HookPoint::ResidPre`]`(L)` of sequence 0.
    fn labels<B: Backend>(&self, m: &Model<B>, out: &ForwardOutput, metric: &Metric) -> Labels {
        let row = out.logits.last_of(0).unwrap();
        let x = out.captures[&HookPoint::ResidPre(m.n_layers())]
            .last_of(0)
            .unwrap();
        Labels {
            y: (
                row[metric.syc as usize] as f64,
                row[metric.anti as usize] as f64,
            ),
            cond: self.cond(x),
        }
    }
}

pub fn clean<B: Backend>(m: &Model<B>, pair: &TokenPair, metric: &Metric) -> Clean {
    let mut taps = Taps::new();
    for l in 0..m.n_layers() {
        for p in [
            HookPoint::AttnIn(l),
            HookPoint::Z(l),
            HookPoint::AttnOut(l),
            HookPoint::MlpOut(l),
        ] {
            taps = taps.capture(p, Positions::Last);
        }
    }
    let taps = taps.capture(HookPoint::ResidPre(m.n_layers()), Positions::Last);
    let seqs = vec![pair.reference.clone(), pair.counterfactual.clone()];
    let out = m.forward(&seqs, &taps).unwrap();
    let get = out
        .captures
        .iter()
        .map(|(p, c)| {
            (
                *p,
                (
                    c.last_of(0).unwrap().to_vec(),
                    c.last_of(1).unwrap().to_vec(),
                ),
            )
        })
        .collect();
    let unembed = Unembed::new(m, metric);
    let labels = unembed.labels(m, &out, metric);
    Clean {
        ref_last: pair.reference.len() - 1,
        get,
        ref_labels: labels.y,
        ref_cond: labels.cond,
        unembed,
    }
}

impl Clean {
    /// The clean run's label logits with their `cond`.
    pub fn reference(&self) -> Labels {
        Labels {
            y: self.ref_labels,
            cond: self.ref_cond,
        }
    }
}

fn patch(point: HookPoint, pos: usize, col0: usize, values: Vec<f32>) -> Patch {
    Patch {
        point,
        seq: 0,
        pos,
        col0,
        values,
    }
}

/// The label logits of X_r with edge `e` patched as above; None without a path.
pub fn edge_labels<B: Backend>(
    m: &Model<B>,
    pair: &TokenPair,
    c: &Clean,
    metric: &Metric,
    e: &Edge,
) -> Option<Labels> {
    let (l_n, dh) = (m.n_layers(), m.head_dim());
    let l_r = e.receiver.layer(l_n);
    let l_s = e.sender.layer();
    if l_s >= l_r {
        return None;
    }
    let t = c.ref_last;
    let clean = |p: HookPoint| c.get[&p].0.clone();
    let mut patches = vec![];
    match e.sender {
        Sender::Head(h) => {
            let z_cf = &c.get[&HookPoint::Z(l_s)].1;
            patches.push(patch(
                HookPoint::Z(l_s),
                t,
                h.head * dh,
                z_cf[h.head * dh..(h.head + 1) * dh].to_vec(),
            ));
            patches.push(patch(
                HookPoint::MlpOut(l_s),
                t,
                0,
                clean(HookPoint::MlpOut(l_s)),
            ));
        }
        Sender::Mlp(l) => {
            patches.push(patch(
                HookPoint::MlpOut(l),
                t,
                0,
                c.get[&HookPoint::MlpOut(l)].1.clone(),
            ));
        }
    }
    for l in l_s + 1..l_r.min(l_n) {
        patches.push(patch(
            HookPoint::AttnOut(l),
            t,
            0,
            clean(HookPoint::AttnOut(l)),
        ));
        patches.push(patch(
            HookPoint::MlpOut(l),
            t,
            0,
            clean(HookPoint::MlpOut(l)),
        ));
    }
    let seqs = vec![pair.reference.clone()];
    let final_resid = HookPoint::ResidPre(l_n);
    let Receiver::Head(r) = e.receiver else {
        let taps = Taps {
            patches,
            ..Taps::new()
        }
        .capture(final_resid, Positions::Last);
        return Some(
            c.unembed
                .labels(m, &m.forward(&seqs, &taps).unwrap(), metric),
        );
    };
    // Forward 1: r's channel at t.
    let point = e.channel.hook(l_r).unwrap();
    let taps = Taps {
        patches,
        ..Taps::new()
    }
    .capture(point, Positions::Last);
    let out = m.forward(&seqs, &taps).unwrap();
    let group = r.head / (m.n_heads() / m.cfg.num_key_value_heads);
    let slot = if e.channel == Channel::Q {
        r.head
    } else {
        group
    };
    let value = out.captures[&point].last_of(0).unwrap()[slot * dh..(slot + 1) * dh].to_vec();
    // Forward 2: the channel patched into the clean run.
    let mut patches = vec![patch(point, t, slot * dh, value)];
    if e.channel != Channel::Q {
        let z = clean(HookPoint::Z(l_r));
        for h in (0..m.n_heads())
            .filter(|&h| h != r.head && h / (m.n_heads() / m.cfg.num_key_value_heads) == group)
        {
            patches.push(patch(
                HookPoint::Z(l_r),
                t,
                h * dh,
                z[h * dh..(h + 1) * dh].to_vec(),
            ));
        }
    }
    for l in l_r + 1..l_n {
        patches.push(patch(
            HookPoint::AttnIn(l),
            t,
            0,
            clean(HookPoint::AttnIn(l)),
        ));
    }
    let taps = Taps {
        patches,
        ..Taps::new()
    }
    .capture(final_resid, Positions::Last);
    Some(
        c.unembed
            .labels(m, &m.forward(&seqs, &taps).unwrap(), metric),
    )
}

/// How far two exact f32 computations of the same label logit may differ, in units of
/// `f32::EPSILON * cond`. Measured on the tiny fixtures (every edge, 3 pairs; `docs/circuit.md`):
/// this oracle on the fast CPU kernels against itself on the reference kernels (the same
/// sums in another order) differs by up to 9.4 units; the batched path from the oracle by up
/// to 6.2. 16 leaves the floor's measured maximum a margin of 1.7x.
pub const FLOOR_UNITS: f64 = 16.0;

/// The f32 rounding floor of a label logit whose terms sum to `cond` in absolute value.
pub fn floor(cond: f64) -> f64 {
    FLOOR_UNITS * f32::EPSILON as f64 * cond
}

/// What a label logit is held to: 1e-5 relative, or its rounding floor where that is larger
/// (a logit much smaller than its terms, `cond / |y| > 5`, cannot be 1e-5 relative in f32).
pub fn label_tol(y: f64, cond: f64) -> f64 {
    (1e-5 * y.abs()).max(floor(cond))
}

/// What a score of patched labels `y` against reference labels `y_ref` is held to: 1e-5
/// relative, or where larger the score's spread when each of the four label logits moves by
/// its rounding floor (the corners of that box; a score is a difference of nearly equal
/// metrics, and the ratio metric magnifies label errors near its pole y_syc + y_anti = 0).
pub fn score_tol(metric: &Metric, y: Labels, y_ref: Labels) -> f64 {
    let score =
        |a: (f64, f64), b: (f64, f64)| metric.score(metric.value(a.0, a.1), metric.value(b.0, b.1));
    let s0 = score(y.y, y_ref.y);
    let at = |v: f64, cond: f64, corner: usize, bit: usize| {
        v + if corner >> bit & 1 == 1 { 1.0 } else { -1.0 } * floor(cond)
    };
    let spread = (0..16)
        .map(|k| {
            let a = (at(y.y.0, y.cond.0, k, 0), at(y.y.1, y.cond.1, k, 1));
            let b = (
                at(y_ref.y.0, y_ref.cond.0, k, 2),
                at(y_ref.y.1, y_ref.cond.1, k, 3),
            );
            (score(a, b) - s0).abs()
        })
        .fold(0.0f64, f64::max);
    (1e-5 * s0.abs()).max(spread)
}
