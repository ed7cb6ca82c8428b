//! The literal oracle of an edge score: patched forwards by taps, nothing batched.
//!
//! Edge s -> r via c on pair p: forward 1 runs X_r with s's last-position output set to
//! X_c's (z slice or MLP output) and every other component between s and r held at its
//! clean X_r output (attention and MLP outputs of the layers in between), and captures r's
//! channel c at the last position (for the logits: reads them there). Forward 2 runs X_r
//! with that channel patched in (for a GQA key/value, the group's other heads reset to
//! their clean z so only r uses it), later heads frozen (attention inputs at the last
//! position reset to X_r's), MLPs recomputed, and reads the label logits.
#![allow(dead_code)]

use pinpoint::backend::Backend;
use pinpoint::diagnose::circuit::{Channel, Edge, Receiver, Sender};
use pinpoint::diagnose::metric::Metric;
use pinpoint::diagnose::pairs::TokenPair;
use pinpoint::heads::{HookPoint, Patch, Positions, Taps};
use pinpoint::Model;

/// X_r's and X_c's last-position captures of every layer: (ref, cf) per point.
pub struct Clean {
    pub ref_last: usize,
    pub get: std::collections::BTreeMap<HookPoint, (Vec<f32>, Vec<f32>)>,
    pub ref_labels: (f64, f64),
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
    let row = out.logits.last_of(0).unwrap();
    Clean {
        ref_last: pair.reference.len() - 1,
        get,
        ref_labels: (
            row[metric.syc as usize] as f64,
            row[metric.anti as usize] as f64,
        ),
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
) -> Option<(f64, f64)> {
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
    let Receiver::Head(r) = e.receiver else {
        let out = m
            .forward(
                &seqs,
                &Taps {
                    patches,
                    ..Taps::new()
                },
            )
            .unwrap();
        let row = out.logits.last_of(0).unwrap();
        return Some((
            row[metric.syc as usize] as f64,
            row[metric.anti as usize] as f64,
        ));
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
    let out = m
        .forward(
            &seqs,
            &Taps {
                patches,
                ..Taps::new()
            },
        )
        .unwrap();
    let row = out.logits.last_of(0).unwrap();
    Some((
        row[metric.syc as usize] as f64,
        row[metric.anti as usize] as f64,
    ))
}
