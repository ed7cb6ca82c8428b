//! EAP and EAP-IG edge scores from one backward per receiver channel (`docs/circuit.md`).
//!
//! The exact score of edge s -> r via c is `phi_rc(x_r + delta_s) - phi_rc(x_r)`, with
//! `phi_rc(x)` the score when r's channel c at the last position is recomputed from the
//! residual x entering r's layer (the rest as [`super::circuit_exact`]). EAP (Syed et al.)
//! takes the first-order term `delta_s . grad phi_rc(x_r)`; EAP-IG (Hanna et al.) averages the
//! gradient over `m` points of the straight path from X_r's residual to X_c's,
//! `x_r + (k / m) (x_c - x_r)`, k = 1..m (the receiver's inputs interpolated, one path
//! shared by all its senders). The gradient runs backward through the label logits and
//! final norm, the MLPs from r's layer on (later heads frozen, as the exact carry), W_O of
//! r, r's attention at the last position (host, f64), RoPE, the channel's rows and r's
//! layer norm.

use super::attribution::{metric_grad, score_per_unit};
use super::circuit_edge::{Channel, Receiver};
use super::circuit_exact::{channel_rows, upload_rows};
use super::circuit_receiver::{HeadInputs, PairRun};
use super::metric::Metric;
use crate::backend::TrainBackend;
use crate::heads::HeadId;
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::Result;

/// `grad phi_rc` averaged over the path's points: `[channel][pair][d]` for receiver `r`.
/// `steps = None`: EAP (the gradient at X_r); `Some(m)`: EAP-IG with m points.
pub fn receiver_grads<B: TrainBackend>(
    model: &Model<B>,
    runs: &[PairRun],
    metric: &Metric,
    r: Receiver,
    steps: Option<usize>,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let (b, l_n, d) = (&model.backend, model.n_layers(), model.cfg.hidden_size);
    let l_r = r.layer(l_n);
    let alphas: Vec<f64> = match steps {
        None => vec![0.0],
        Some(m) => (1..=m.max(1)).map(|k| k as f64 / m.max(1) as f64).collect(),
    };
    // Rows: (pair, alpha); the residual entering r's layer at each point.
    let mut x_rows = vec![];
    let mut row_pair = vec![];
    for (p, run) in runs.iter().enumerate() {
        for &a in &alphas {
            let (x0, x1) = (&run.resid_pre[l_r], &run.resid_cf[l_r]);
            x_rows.push(
                x0.iter()
                    .zip(x1)
                    .map(|(x0, x1)| (*x0 as f64 + a * (*x1 as f64 - *x0 as f64)) as f32)
                    .collect::<Vec<f32>>(),
            );
            row_pair.push(p);
        }
    }
    let x = upload_rows(b, &x_rows, d)?;
    let f_ref: Vec<f64> = runs
        .iter()
        .map(|r| metric.value(r.ref_labels.0, r.ref_labels.1))
        .collect();
    let per_row: Vec<Vec<Vec<f64>>> = match r {
        Receiver::Logits => vec![final_grad(model, metric, &x, &row_pair, &f_ref)?],
        Receiver::Head(head) => head_grads(model, runs, metric, head, &x, &row_pair, &f_ref)?,
    };
    // Average over the path's points.
    let n_a = alphas.len();
    Ok(per_row
        .into_iter()
        .map(|rows| {
            rows.chunks(n_a)
                .map(|pts| {
                    let mut g = vec![0.0; d];
                    for pt in pts {
                        g.iter_mut().zip(pt).for_each(|(g, x)| *g += x / n_a as f64);
                    }
                    g
                })
                .collect()
        })
        .collect())
}

/// `[n][d]` host rows of a device tensor, f64.
fn host_rows<B: TrainBackend>(b: &B, t: &B::Tensor) -> Result<Vec<Vec<f64>>> {
    let h = b.download(t)?;
    let w = h.shape.get(1).copied().unwrap_or(0).max(1);
    Ok(h.data
        .chunks(w)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect())
}

/// The score's gradient at final residual rows `x [n, d]` (row i of pair `row_pair[i]`).
fn final_grad<B: TrainBackend>(
    model: &Model<B>,
    metric: &Metric,
    x: &B::Tensor,
    row_pair: &[usize],
    f_ref: &[f64],
) -> Result<Vec<Vec<f64>>> {
    let b = &model.backend;
    let w = &model.weights;
    let eps = model.cfg.rms_norm_eps as f32;
    let rows = b.gather_rows(
        w.lm_head.as_ref().unwrap_or(&w.embed),
        &[metric.syc as usize, metric.anti as usize],
    )?; // [2, d]
    let y = b.download(&b.linear(&b.rmsnorm(x, &w.final_norm, eps)?, &rows)?)?;
    let dy: Vec<f32> = y
        .data
        .chunks(2)
        .zip(row_pair)
        .flat_map(|(y, &p)| {
            let (gs, ga) = metric_grad(metric, y[0] as f64, y[1] as f64);
            let u = score_per_unit(metric, f_ref[p]);
            [(gs * u) as f32, (ga * u) as f32]
        })
        .collect();
    let dy = b.upload(&HostTensor::new(vec![row_pair.len(), 2], dy))?;
    let dhn = b.linear_bwd_input(&dy, &rows)?;
    host_rows(b, &b.rmsnorm_bwd(&dhn, x, &w.final_norm, eps, None)?)
}

/// The score's gradient at the residual entering `head`'s layer, per channel: `[c][row][d]`.
fn head_grads<B: TrainBackend>(
    model: &Model<B>,
    runs: &[PairRun],
    metric: &Metric,
    head: HeadId,
    x: &B::Tensor,
    row_pair: &[usize],
    f_ref: &[f64],
) -> Result<Vec<Vec<Vec<f64>>>> {
    let (b, d, dh) = (&model.backend, model.cfg.hidden_size, model.head_dim());
    let (l_r, n) = (head.layer, row_pair.len());
    let lw = &model.weights.layers[l_r];
    let channels = Channel::QKV;
    let ch = channel_rows(model, head, &channels, x)?; // [c][row][D]
    let inputs: Vec<HeadInputs> = runs
        .iter()
        .map(|run| HeadInputs::new(model, run, head))
        .collect::<Result<_>>()?;
    // Forward at each point: r's z there against the clean z (channel at X_r), rows (c, row).
    let (mut dz_vals, mut base_rows, mut carry_pair, mut att) = (vec![], vec![], vec![], vec![]);
    for (ci, &c) in channels.iter().enumerate() {
        for (i, &p) in row_pair.iter().enumerate() {
            let inp = &inputs[p];
            let clean = inp.place(c, &clean_channel(runs, p, head, c, model)?);
            let z0 = inp.attend(c, &clean).z;
            let new = inp.place(c, &ch[ci][i]);
            let at = inp.attend(c, &new);
            dz_vals.extend(at.z.iter().zip(&z0).map(|(a, b)| (a - b) as f32));
            att.push((new, at));
            let run = &runs[p];
            base_rows.push(
                run.resid_pre[l_r]
                    .iter()
                    .zip(&run.attn_out[l_r])
                    .map(|(x, a)| x + a)
                    .collect::<Vec<f32>>(),
            );
            carry_pair.push(p);
        }
    }
    let m = carry_pair.len();
    let mut dz = b.zeros(&[m, model.n_heads() * dh])?;
    b.write_slices(
        &mut dz,
        &(0..m).collect::<Vec<_>>(),
        &vec![head.head * dh; m],
        &HostTensor::new(vec![m, dh], dz_vals),
    )?;
    let mut x_mid = b.linear(&dz, &lw.wo)?;
    b.add_assign(&mut x_mid, &upload_rows(b, &base_rows, d)?)?;
    let g_mid = carry_grad(model, metric, runs, &carry_pair, l_r, x_mid, f_ref)?;
    let dz_all = host_rows(b, &b.linear_bwd_input(&g_mid, &lw.wo)?)?; // [m][H*D]
                                                                      // Back through the attention to each channel's pre-RoPE input, then its rows.
    let mut out = vec![];
    for (ci, &c) in channels.iter().enumerate() {
        let mut dpre = Vec::with_capacity(n * dh);
        for (i, &p) in row_pair.iter().enumerate() {
            let k = ci * n + i;
            let (new, at) = &att[k];
            let dzh = &dz_all[k][head.head * dh..(head.head + 1) * dh];
            dpre.extend(
                inputs[p]
                    .attend_bwd(c, new, at, dzh)
                    .iter()
                    .map(|&g| g as f32),
            );
        }
        let (w, _) = super::circuit_exact::channel_weight(model, head, c)?;
        let dpre = b.upload(&HostTensor::new(vec![n, dh], dpre))?;
        let dh_norm = b.linear_bwd_input(&dpre, &w)?; // [n, d]
        let eps = model.cfg.rms_norm_eps as f32;
        out.push(host_rows(
            b,
            &b.rmsnorm_bwd(&dh_norm, x, &lw.attn_norm, eps, None)?,
        )?);
    }
    Ok(out)
}

/// X_r's pre-RoPE channel `c` of `head` at the last position (captured), f64.
fn clean_channel<B: TrainBackend>(
    runs: &[PairRun],
    p: usize,
    head: HeadId,
    c: Channel,
    model: &Model<B>,
) -> Result<Vec<f64>> {
    let dh = model.head_dim();
    let (q, k, v) = runs[p]
        .qkv
        .get(&head.layer)
        .ok_or_else(|| anyhow::anyhow!("no clean q/k/v of layer {}", head.layer))?;
    let g = super::circuit_exact::kv_group(model, head);
    let (row, slot) = match c {
        Channel::Q => (q, head.head),
        Channel::K => (k.last().expect("a key"), g),
        _ => (v.last().expect("a value"), g),
    };
    Ok(row[slot * dh..(slot + 1) * dh]
        .iter()
        .map(|&x| x as f64)
        .collect())
}

/// The score's gradient at rows `x_mid [n, d]` (the residual after layer `l0`'s attention of
/// pair `row_pair[i]`), through the MLPs of `l0` and later layers (later attention frozen,
/// as [`super::circuit_exact::carry_to_labels`], whose forward this repeats keeping what
/// the backward reads), the final norm and the label logits.
fn carry_grad<B: TrainBackend>(
    model: &Model<B>,
    metric: &Metric,
    runs: &[PairRun],
    row_pair: &[usize],
    l0: usize,
    mut x: B::Tensor,
    f_ref: &[f64],
) -> Result<B::Tensor> {
    let b = &model.backend;
    let (d, eps) = (model.cfg.hidden_size, model.cfg.rms_norm_eps as f32);
    let mut saved = vec![]; // per layer (x_mid, gate, up)
    for l in l0..model.n_layers() {
        let lw = &model.weights.layers[l];
        if l > l0 {
            let attn: Vec<Vec<f32>> = runs.iter().map(|r| r.attn_out[l].clone()).collect();
            b.add_assign(
                &mut x,
                &b.gather_rows(&upload_rows(b, &attn, d)?, row_pair)?,
            )?;
        }
        let h2 = b.rmsnorm(&x, &lw.mlp_norm, eps)?;
        let (gate, up) = (b.linear(&h2, &lw.w_gate)?, b.linear(&h2, &lw.w_up)?);
        let mlp = b.linear(&b.swiglu(&gate, &up)?, &lw.w_down)?;
        saved.push((b.copy(&x)?, gate, up));
        b.add_assign(&mut x, &mlp)?;
    }
    let fr: Vec<f64> = row_pair.iter().map(|&p| f_ref[p]).collect();
    let ident: Vec<usize> = (0..row_pair.len()).collect();
    let mut g = final_grad(model, metric, &x, &ident, &fr)?;
    let mut g = b.upload(&HostTensor::new(
        vec![row_pair.len(), d],
        g.drain(..).flatten().map(|v| v as f32).collect(),
    ))?;
    for (k, (x_mid, gate, up)) in saved.iter().enumerate().rev() {
        let lw = &model.weights.layers[l0 + k];
        let dact = b.linear_bwd_input(&g, &lw.w_down)?;
        let (dgate, dup) = b.swiglu_bwd(&dact, gate, up)?;
        let mut dh2 = b.linear_bwd_input(&dgate, &lw.w_gate)?;
        b.add_assign(&mut dh2, &b.linear_bwd_input(&dup, &lw.w_up)?)?;
        b.add_assign(
            &mut g,
            &b.rmsnorm_bwd(&dh2, x_mid, &lw.mlp_norm, eps, None)?,
        )?;
    }
    Ok(g)
}
