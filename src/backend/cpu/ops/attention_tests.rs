//! The attention forward and backward against an f64 reference.

use super::*;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, TrainBackend};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// f64 attention forward and backward, one query row at a time.
#[allow(clippy::type_complexity)]
fn naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dz: &[f32],
    spans: &[SeqSpan],
    sh: AttnShape,
    kr: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let dh = sh.head_dim;
    let (qc, kc) = (sh.n_heads * dh, sh.n_kv_heads * dh);
    let n = q.len() / qc;
    let group = sh.n_heads / sh.n_kv_heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let (mut z, mut dq) = (vec![0.0; n * qc], vec![0.0; n * qc]);
    let (mut dk, mut dv) = (vec![0.0; kr * kc], vec![0.0; kr * kc]);
    for s in spans {
        for h in 0..sh.n_heads {
            let g = h / group;
            for i in 0..s.q_len {
                let pos = s.pos0 + i;
                let qi = (s.q_start + i) * qc + h * dh;
                let keys: Vec<usize> = (key_lo(pos, sh.window)..=pos).collect();
                let kr_ = |j: usize| s.kv_row(j) * kc + g * dh;
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..dh)
                            .map(|c| q[qi + c] as f64 * k[kr_(j) + c] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                let dp: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..dh)
                            .map(|c| dz[qi + c] as f64 * v[kr_(j) + c] as f64)
                            .sum()
                    })
                    .collect();
                let pdp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (jj, &j) in keys.iter().enumerate() {
                    let ds = p[jj] * (dp[jj] - pdp) * scale;
                    for c in 0..dh {
                        z[qi + c] += p[jj] * v[kr_(j) + c] as f64;
                        dq[qi + c] += ds * k[kr_(j) + c] as f64;
                        dk[kr_(j) + c] += ds * q[qi + c] as f64;
                        dv[kr_(j) + c] += p[jj] * dz[qi + c] as f64;
                    }
                }
            }
        }
    }
    (z, dq, dk, dv)
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

/// The attention forward and backward (blocked on AVX-512: spans of >= 16 queries,
/// several query blocks, a cached prefix in separate rows, with and without a window)
/// against an f64 reference.
#[test]
fn attention_and_backward_match_f64() {
    // Span 0: 40 fresh queries. Span 1: 20 queries at positions 10..30, their keys in
    // rows 40..60 and the cached prefix (positions 0..10) in rows 60..70.
    let spans = [
        SeqSpan {
            q_start: 0,
            q_len: 40,
            kv_start: 0,
            pos0: 0,
            kv_new: None,
        },
        SeqSpan {
            q_start: 40,
            q_len: 20,
            kv_start: 60,
            pos0: 10,
            kv_new: Some(40),
        },
    ];
    let (n, kr) = (60, 70);
    for window in [None, Some(13)] {
        let sh = AttnShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 24,
            window,
        };
        let (qc, kc) = (6 * 24, 2 * 24);
        let q = rnd(n * qc, 1);
        let k = rnd(kr * kc, 2);
        let v = rnd(kr * kc, 3);
        let dz = rnd(n * qc, 4);
        let t = |d: &[f32], r, c| HostTensor::new(vec![r, c], d.to_vec());
        let (qt, kt, vt, dzt) = (t(&q, n, qc), t(&k, kr, kc), t(&v, kr, kc), t(&dz, n, qc));
        let (z, pats) = CpuBackend
            .attention(&qt, &kt, &vt, &spans, sh, &[(1, 4), (0, 1)])
            .unwrap();
        let (dq, dk, dv) = CpuBackend
            .attention_bwd(&dzt, &qt, &kt, &vt, &spans, sh)
            .unwrap();
        let (wz, wdq, wdk, wdv) = naive(&q, &k, &v, &dz, &spans, sh, kr);
        for (name, got, want) in [
            ("z", &z.data, &wz),
            ("dq", &dq.data, &wdq),
            ("dk", &dk.data, &wdk),
            ("dv", &dv.data, &wdv),
        ] {
            let e = max_err(got, want);
            assert!(e < 1e-5, "{name} (window {window:?}): max err {e}");
        }
        // Patterns in (seq, head) order, rows summing to one over the visible keys.
        assert_eq!(
            pats.iter().map(|p| (p.seq, p.head)).collect::<Vec<_>>(),
            [(0, 1), (1, 4)]
        );
        let p1 = &pats[1].probs;
        assert_eq!(p1.shape, [20, 30]);
        for i in 0..20 {
            let pos = 10 + i;
            let row = &p1.data[i * 30..(i + 1) * 30];
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            assert!(row[pos + 1..].iter().all(|&x| x == 0.0));
            assert!(row[..key_lo(pos, window)].iter().all(|&x| x == 0.0));
        }
    }
}
