//! The exact edge scores, batched (`docs/circuit.md`).
//!
//! Edge s -> r via channel c on a pair: X_r's last-position residual entering r's layer
//! moves by s's output change alone (`delta_s`: `W_O^s (z_c - z_r)` or `mlp_c - mlp_r`),
//! every other component keeps its clean output; r's channel c at the last position is
//! recomputed from that residual (r's layer norm, the channel's rows of W_Q/W_K/W_V and
//! bias, RoPE); r's z there follows on the host (f64, [`HeadInputs`]); the change of r's
//! output is carried to the label logits as path patching carries a head's (later heads
//! frozen at their clean values, MLPs recomputed). All senders of a receiver (and the
//! three channels) are rows of one batch: one null row per pair (no sender moved) goes
//! the same way, and each score is against it, so the rounding of the row path cancels.

use super::circuit_edge::{Channel, Edge, Receiver, Sender};
use super::circuit_receiver::{HeadInputs, PairRun};
use super::metric::Metric;
use super::path_patching::{mlp_carry, LabelHead};
use crate::backend::Backend;
use crate::heads::HeadId;
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use indicatif::ProgressBar;

/// Exact scores of every edge on every pair.
#[derive(Debug, Clone)]
pub struct ExactScores {
    pub edges: Vec<Edge>,
    /// `[edge][pair]` in [`Metric::score`] units; 0 for an edge without a path.
    pub per_pair: Vec<Vec<f64>>,
    /// Label logits (syc, anti) of the patched run `[edge][pair]` (the null row's for an
    /// edge without a path).
    pub labels: Vec<Vec<(f64, f64)>>,
}

impl ExactScores {
    pub fn mean(&self, e: usize) -> f64 {
        let v = &self.per_pair[e];
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// Each sender's change of the last-position residual on each pair: `[pair][sender][d]`.
pub fn sender_deltas<B: Backend>(
    model: &Model<B>,
    runs: &[PairRun],
    senders: &[Sender],
) -> Result<Vec<Vec<Vec<f32>>>> {
    let b = &model.backend;
    let (h_n, dh) = (model.n_heads(), model.head_dim());
    let mut out = vec![vec![vec![]; senders.len()]; runs.len()];
    for (si, s) in senders.iter().enumerate() {
        if let Sender::Mlp(l) = *s {
            for (p, run) in runs.iter().enumerate() {
                let (c, r) = (&run.mlp_cf[l], &run.mlp_ref[l]);
                out[p][si] = c.iter().zip(r).map(|(c, r)| c - r).collect();
            }
        }
    }
    // Heads: per layer, rows (sender, pair) of dz with only the head's slice set, times W_O.
    let layers: std::collections::BTreeSet<usize> = senders
        .iter()
        .filter_map(|s| match s {
            Sender::Head(h) => Some(h.layer),
            _ => None,
        })
        .collect();
    for l in layers {
        let idx: Vec<(usize, HeadId)> = senders
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Sender::Head(h) if h.layer == l => Some((i, *h)),
                _ => None,
            })
            .collect();
        let (mut rows, mut col0, mut vals) = (vec![], vec![], vec![]);
        for (_, h) in &idx {
            for run in runs {
                let sl = h.head * dh..(h.head + 1) * dh;
                let (c, r) = (&run.z_cf[l][sl.clone()], &run.z_ref[l][sl]);
                vals.extend(c.iter().zip(r).map(|(c, r)| c - r));
                rows.push(rows.len());
                col0.push(h.head * dh);
            }
        }
        let mut dz = b.zeros(&[rows.len(), h_n * dh])?;
        b.write_slices(
            &mut dz,
            &rows,
            &col0,
            &HostTensor::new(vec![rows.len(), dh], vals),
        )?;
        let delta = b.download(&b.linear(&dz, &model.weights.layers[l].wo)?)?;
        let d = model.cfg.hidden_size;
        for (k, (si, _)) in idx.iter().enumerate() {
            for (p, row) in out.iter_mut().enumerate() {
                row[*si] = delta.data[(k * runs.len() + p) * d..][..d].to_vec();
            }
        }
    }
    Ok(out)
}

/// The rows of head `head`'s slice of weight `w` (`[H*D or G*D, d]` -> `[D, d]`), and of
/// its bias (`[1, *]` -> `[D]`) when the model has one.
pub(super) fn channel_weight<B: Backend>(
    model: &Model<B>,
    head: HeadId,
    channel: Channel,
) -> Result<(B::Tensor, Option<Vec<f32>>)> {
    let (cfg, b) = (&model.cfg, &model.backend);
    let lw = &model.weights.layers[head.layer];
    let dh = cfg.head_dim;
    let (w, slot, bias_i) = match channel {
        Channel::Q => (&lw.wq, head.head, 0),
        Channel::K => (&lw.wk, kv_group(model, head), 1),
        _ => (&lw.wv, kv_group(model, head), 2),
    };
    let rows: Vec<usize> = (slot * dh..(slot + 1) * dh).collect();
    let bias = match &lw.qkv_bias {
        Some(bs) => Some(b.download(&bs[bias_i])?.data[slot * dh..(slot + 1) * dh].to_vec()),
        None => None,
    };
    Ok((b.gather_rows(w, &rows)?, bias))
}

pub(super) fn kv_group<B: Backend>(model: &Model<B>, head: HeadId) -> usize {
    let cfg = &model.cfg;
    head.head / (cfg.num_attention_heads / cfg.num_key_value_heads)
}

/// Channel `c` of `head` at residual rows `x [n, d]` (host): `[n][D]` pre-RoPE, f64.
pub(super) fn channel_rows<B: Backend>(
    model: &Model<B>,
    head: HeadId,
    channels: &[Channel],
    x: &B::Tensor,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let b = &model.backend;
    let lw = &model.weights.layers[head.layer];
    let h = b.rmsnorm(x, &lw.attn_norm, model.cfg.rms_norm_eps as f32)?;
    let dh = model.head_dim();
    let eps = model.cfg.rms_norm_eps;
    channels
        .iter()
        .map(|&c| {
            let (w, bias) = channel_weight(model, head, c)?;
            // Qwen3: q and k are RMS-normed per head after the bias, before RoPE (the
            // layer's order; hook_q/hook_k see the normed rows).
            let norm = match (&lw.qk_norm, c) {
                (Some([qn, _]), Channel::Q) => Some(b.download(qn)?.data),
                (Some([_, kn]), Channel::K) => Some(b.download(kn)?.data),
                _ => None,
            };
            let y = b.download(&b.linear(&h, &w)?)?;
            Ok(y.data
                .chunks(dh)
                .map(|row| {
                    let mut r: Vec<f64> = match &bias {
                        Some(bb) => row.iter().zip(bb).map(|(y, c)| (y + c) as f64).collect(),
                        None => row.iter().map(|&y| y as f64).collect(),
                    };
                    if let Some(g) = &norm {
                        let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
                        let inv = 1.0 / (ms + eps).sqrt();
                        r.iter_mut().zip(g).for_each(|(v, &g)| *v *= inv * g as f64);
                    }
                    r
                })
                .collect())
        })
        .collect()
}

/// Carry rows `x [n, d]` (row i: the residual after layer `l0`'s attention of pair
/// `row_pair[i]`) through the MLP of `l0` and every later layer, later attention frozen at
/// the clean value, to the label logits.
pub(super) fn carry_to_labels<B: Backend>(
    model: &Model<B>,
    label: &LabelHead<'_, B>,
    runs: &[PairRun],
    row_pair: &[usize],
    l0: usize,
    mut x: B::Tensor,
) -> Result<Vec<(f64, f64)>> {
    let b = &model.backend;
    let d = model.cfg.hidden_size;
    for l in l0..model.n_layers() {
        if l > l0 {
            let data: Vec<f32> = runs.iter().flat_map(|r| r.attn_out[l].clone()).collect();
            let table = b.upload(&HostTensor::new(vec![runs.len(), d], data))?;
            b.add_assign(&mut x, &b.gather_rows(&table, row_pair)?)?;
        }
        mlp_carry(model, l, &mut x)?;
    }
    label.logits(&x)
}

/// Upload host rows `[n][d]`.
pub(super) fn upload_rows<B: Backend>(b: &B, rows: &[Vec<f32>], d: usize) -> Result<B::Tensor> {
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    b.upload(&HostTensor::new(vec![rows.len(), d], data))
}

/// Exact scores of every edge of `edges` (grouped by receiver) on every pair of `runs`,
/// `chunk` pairs per batch.
pub fn exact_scores<B: Backend>(
    model: &Model<B>,
    runs: &[PairRun],
    metric: &Metric,
    senders: &[Sender],
    edges: &[Edge],
    chunk: usize,
    progress: Option<&ProgressBar>,
) -> Result<ExactScores> {
    ensure!(!runs.is_empty(), "a circuit needs at least one pair");
    let label = LabelHead::new(model, metric)?;
    let mut out = ExactScores {
        edges: edges.to_vec(),
        per_pair: vec![vec![0.0; runs.len()]; edges.len()],
        labels: vec![vec![(0.0, 0.0); runs.len()]; edges.len()],
    };
    let mut receivers: Vec<Receiver> = edges.iter().map(|e| e.receiver).collect();
    receivers.dedup();
    for (c, group) in runs.chunks(chunk.max(1)).enumerate() {
        let deltas = sender_deltas(model, group, senders)?;
        let batch = Batch {
            runs: group,
            offset: c * chunk.max(1),
            deltas: &deltas,
        };
        for &r in &receivers {
            score_receiver(model, &label, &batch, metric, senders, r, &mut out)?;
            if let Some(pb) = progress {
                pb.inc(group.len() as u64);
            }
        }
    }
    Ok(out)
}

/// Pairs `offset..offset + runs.len()` and their senders' deltas (`[pair][sender][d]`).
struct Batch<'a> {
    runs: &'a [PairRun],
    offset: usize,
    deltas: &'a [Vec<Vec<f32>>],
}

/// The edges of receiver `r` on the batch's pairs into `out`.
fn score_receiver<B: Backend>(
    model: &Model<B>,
    label: &LabelHead<'_, B>,
    batch: &Batch<'_>,
    metric: &Metric,
    senders: &[Sender],
    r: Receiver,
    out: &mut ExactScores,
) -> Result<()> {
    let (b, l_n, d) = (&model.backend, model.n_layers(), model.cfg.hidden_size);
    let (runs, deltas) = (batch.runs, batch.deltas);
    let l_r = r.layer(l_n);
    let live: Vec<usize> = (0..senders.len())
        .filter(|&s| senders[s].layer() < l_r)
        .collect();
    let channels = r.channels();
    // Rows per pair: the null row, then (channel, live sender).
    let per = 1 + channels.len() * live.len();
    let y: Vec<(f64, f64)> = match r {
        Receiver::Logits => {
            let mut rows = vec![];
            for (p, run) in runs.iter().enumerate() {
                rows.push(run.resid_pre[l_n].clone());
                rows.extend(
                    live.iter()
                        .map(|&s| add(&run.resid_pre[l_n], &deltas[p][s])),
                );
            }
            label.logits(&upload_rows(b, &rows, d)?)?
        }
        Receiver::Head(head) => receiver_rows(model, label, runs, deltas, &live, head, channels)?,
    };
    for (ei, e) in out.edges.iter().enumerate() {
        if e.receiver != r {
            continue;
        }
        let ci = channels
            .iter()
            .position(|&c| c == e.channel)
            .expect("channel");
        let si = senders.iter().position(|&s| s == e.sender);
        let k = si.and_then(|si| live.iter().position(|&s| s == si));
        for p in 0..runs.len() {
            let null = y[p * per];
            let row = k.map_or(null, |k| y[p * per + 1 + ci * live.len() + k]);
            out.labels[ei][batch.offset + p] = row;
            out.per_pair[ei][batch.offset + p] = match k {
                None => 0.0,
                Some(_) => metric.score(metric.value(row.0, row.1), metric.value(null.0, null.1)),
            };
        }
    }
    Ok(())
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// Label logits of the rows of a head receiver: per pair the null row, then each channel's
/// live senders.
fn receiver_rows<B: Backend>(
    model: &Model<B>,
    label: &LabelHead<'_, B>,
    runs: &[PairRun],
    deltas: &[Vec<Vec<f32>>],
    live: &[usize],
    head: HeadId,
    channels: &[Channel],
) -> Result<Vec<(f64, f64)>> {
    let (b, d, dh) = (&model.backend, model.cfg.hidden_size, model.head_dim());
    let l_r = head.layer;
    // The receiver's input rows: per pair the clean residual, then each live sender's.
    let mut x_in = vec![];
    for (p, run) in runs.iter().enumerate() {
        x_in.push(run.resid_pre[l_r].clone());
        x_in.extend(
            live.iter()
                .map(|&s| add(&run.resid_pre[l_r], &deltas[p][s])),
        );
    }
    let ch = channel_rows(model, head, channels, &upload_rows(b, &x_in, d)?)?; // [c][row][D]
    let per_in = 1 + live.len();
    let (mut dz_vals, mut base_rows, mut row_pair) = (vec![], vec![], vec![]);
    for (p, run) in runs.iter().enumerate() {
        let inputs = HeadInputs::new(model, run, head)?;
        let base = add(&run.resid_pre[l_r], &run.attn_out[l_r]);
        // The null row (dz = 0), then per channel the live senders' dz against the null
        // channel's z.
        dz_vals.extend(std::iter::repeat_n(0.0f32, dh));
        base_rows.push(base.clone());
        row_pair.push(p);
        for (ci, &c) in channels.iter().enumerate() {
            let rows = &ch[ci][p * per_in..(p + 1) * per_in];
            let z0 = inputs.attend(c, &inputs.place(c, &rows[0])).z;
            for row in &rows[1..] {
                let z = inputs.attend(c, &inputs.place(c, row)).z;
                dz_vals.extend(z.iter().zip(&z0).map(|(a, b)| (a - b) as f32));
                base_rows.push(base.clone());
                row_pair.push(p);
            }
        }
    }
    let n = row_pair.len();
    let mut dz = b.zeros(&[n, model.n_heads() * dh])?;
    b.write_slices(
        &mut dz,
        &(0..n).collect::<Vec<_>>(),
        &vec![head.head * dh; n],
        &HostTensor::new(vec![n, dh], dz_vals),
    )?;
    let mut x = b.linear(&dz, &model.weights.layers[l_r].wo)?;
    b.add_assign(&mut x, &upload_rows(b, &base_rows, d)?)?;
    carry_to_labels(model, label, runs, &row_pair, l_r, x)
}
