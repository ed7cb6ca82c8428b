//! Attribution patching: the first-order score against central finite differences of
//! patched forwards, against activation patching of a small step, and Spearman's rho
//! against hand-computed values.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::diagnose::attribution::{attribution_patching, spearman, AttrPositions};
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::TokenPair;
use pinpoint::diagnose::path_patching::{activation_patching_last, clean_runs, CleanRun};
use pinpoint::heads::{HookPoint, Patch, Positions, Taps};
use pinpoint::Model;

const KINDS: [MetricKind; 3] = [
    MetricKind::LogitDiff,
    MetricKind::Ratio,
    MetricKind::ProbRatio,
];

fn model(name: &str) -> Model<CpuBackend> {
    Model::load_cpu(&fixture(name)).unwrap()
}

/// Pairs of random ids (as tests/diagnose.rs): unequal pairs replace 2 tokens by 1.
fn pairs(seed: u64, n: usize, vocab: u32, equal: bool) -> Vec<TokenPair> {
    let len = move |i: usize| if equal { 10 } else { 9 + i % 3 };
    random_pairs(seed, n, vocab, len, |c, next| {
        let len = c.len();
        if equal {
            c[len / 2] = next();
            c[len / 3] = next();
        } else {
            c.splice(len / 2..len / 2 + 2, [next()]);
        }
    })
}

/// Label tokens whose logits are well away from a zero sum (Ratio is singular there, and
/// its second-order terms blow up near it): the two tokens with the largest smallest
/// last-position logit over the reference prompts.
fn metric_for(m: &Model<CpuBackend>, ps: &[TokenPair], kind: MetricKind) -> Metric {
    let refs: Vec<Vec<u32>> = ps.iter().map(|p| p.reference.clone()).collect();
    let out = m.forward(&refs, &Taps::new()).unwrap();
    let v = m.cfg.vocab_size;
    let low: Vec<f32> = (0..v)
        .map(|t| {
            (0..refs.len())
                .map(|s| out.logits.row_at(s)[t])
                .fold(f32::INFINITY, f32::min)
        })
        .collect();
    let mut idx: Vec<usize> = (0..v).collect();
    idx.sort_by(|&a, &b| low[b].total_cmp(&low[a]));
    Metric {
        kind,
        syc: idx[1] as u32,
        anti: idx[0] as u32,
    }
}

/// z of every layer at every position of `seqs`: `[layer][seq][pos][H*D]`.
fn all_z(m: &Model<CpuBackend>, seqs: &[Vec<u32>]) -> Vec<Vec<Vec<Vec<f32>>>> {
    let out = m
        .forward(
            seqs,
            &Taps::new()
                .with_logits(Positions::None)
                .capture_all_z(m.n_layers(), Positions::All),
        )
        .unwrap();
    (0..m.n_layers())
        .map(|l| {
            let c = out.z(l).unwrap();
            seqs.iter()
                .enumerate()
                .map(|(s, ids)| {
                    (0..ids.len())
                        .map(|p| c.row(s, p).unwrap().to_vec())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Central finite differences of the score along (z_c - z_r) of each head, per pair:
/// `(score(F(z_r + eps dz)) - score(F(z_r - eps dz))) / (2 eps)`, patching the last
/// position (`all = false`, aligned at the last token) or every position.
fn finite_differences(
    m: &Model<CpuBackend>,
    ps: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    all: bool,
    eps: f32,
) -> Vec<Vec<f64>> {
    let d = m.head_dim();
    let heads = m.all_heads();
    let mut fd = vec![vec![0.0; ps.len()]; heads.len()];
    let zr = all_z(
        m,
        &ps.iter().map(|p| p.reference.clone()).collect::<Vec<_>>(),
    );
    let zc = all_z(
        m,
        &ps.iter()
            .map(|p| p.counterfactual.clone())
            .collect::<Vec<_>>(),
    );
    for (p, pair) in ps.iter().enumerate() {
        let f_ref = metric.value(runs[p].ref_labels.0 as f64, runs[p].ref_labels.1 as f64);
        let mut seqs = vec![];
        let mut patches = vec![];
        for head in &heads {
            for sign in [1.0f32, -1.0] {
                let s = seqs.len();
                seqs.push(pair.reference.clone());
                // (position in X_r, position in X_c)
                let spots: Vec<(usize, usize)> = if all {
                    (0..pair.reference.len()).map(|t| (t, t)).collect()
                } else {
                    vec![(pair.ref_last(), pair.cf_last())]
                };
                for (tr, tc) in spots {
                    let (a, b) = (
                        &zr[head.layer][p][tr][head.head * d..(head.head + 1) * d],
                        &zc[head.layer][p][tc][head.head * d..(head.head + 1) * d],
                    );
                    let values = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| x + sign * eps * (y - x))
                        .collect();
                    patches.push(Patch {
                        point: HookPoint::Z(head.layer),
                        seq: s,
                        pos: tr,
                        col0: head.head * d,
                        values,
                    });
                }
            }
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
        for (i, row) in fd.iter_mut().enumerate() {
            let fp = metric.of_logits(out.logits.last_of(2 * i).unwrap());
            let fm = metric.of_logits(out.logits.last_of(2 * i + 1).unwrap());
            row[p] = (metric.score(fp, f_ref) - metric.score(fm, f_ref)) / (2.0 * eps as f64);
        }
    }
    fd
}

/// |a - b| <= tol * max|b| (per pair), with enough non-zero entries to mean something.
fn assert_close_rel(what: &str, a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) {
    let n_pairs = b[0].len();
    let mut worst = 0.0f64;
    for p in 0..n_pairs {
        let scale = b.iter().map(|r| r[p].abs()).fold(0.0, f64::max);
        assert!(scale > 1e-6, "{what}: pair {p}: every score is ~0");
        let mut nonzero = 0;
        for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
            let (x, y) = (ra[p], rb[p]);
            assert!(x.is_finite() && y.is_finite(), "{what}: head {i} pair {p}");
            let e = (x - y).abs() / scale;
            worst = worst.max(e);
            assert!(
                e <= tol,
                "{what}: head {i} pair {p}: attribution {x} vs reference {y} (scale {scale}, rel err {e:e})"
            );
            if y.abs() > 1e-2 * scale {
                nonzero += 1;
            }
        }
        assert!(
            nonzero > a.len() / 2,
            "{what}: pair {p}: only {nonzero} heads with a visible effect"
        );
    }
    eprintln!("{what}: worst rel err {worst:e}");
}

#[test]
fn attribution_is_the_directional_derivative_of_the_score() {
    for name in ["tiny-llama", "tiny-mistral"] {
        let m = model(name);
        let v = m.cfg.vocab_size as u32;
        for (all, ps) in [(false, pairs(7, 3, v, false)), (true, pairs(9, 2, v, true))] {
            for kind in KINDS {
                let metric = metric_for(&m, &ps, kind);
                let runs = clean_runs(&m, &ps, &metric, 2, None).unwrap();
                let pos = if all {
                    AttrPositions::All
                } else {
                    AttrPositions::Last
                };
                let attr = attribution_patching(&m, &ps, &runs, &metric, pos, None).unwrap();
                assert_eq!(attr.heads, m.all_heads());
                for (p, r) in runs.iter().enumerate() {
                    let f = metric.value(r.ref_labels.0 as f64, r.ref_labels.1 as f64);
                    assert_eq!(attr.reference[p], f);
                }
                let fd = finite_differences(&m, &ps, &runs, &metric, all, 1e-2);
                assert_close_rel(
                    &format!("{name} {kind:?} all={all}"),
                    &attr.per_pair,
                    &fd,
                    5e-3,
                );
            }
        }
    }
}

#[test]
fn attribution_approximates_activation_patching_of_a_small_step() {
    let step = 1e-3f32;
    for name in ["tiny-llama", "tiny-mistral"] {
        let m = model(name);
        let ps = pairs(21, 3, m.cfg.vocab_size as u32, false);
        for kind in KINDS {
            let metric = metric_for(&m, &ps, kind);
            let mut runs = clean_runs(&m, &ps, &metric, 4, None).unwrap();
            // z_c := z_r + step (z_c - z_r).
            for r in &mut runs {
                for (zc, zr) in r.z_cf.iter_mut().zip(&r.z_ref) {
                    for (c, x) in zc.iter_mut().zip(zr) {
                        *c = x + step * (*c - x);
                    }
                }
            }
            let attr =
                attribution_patching(&m, &ps, &runs, &metric, AttrPositions::Last, None).unwrap();
            let act = activation_patching_last(&m, &ps, &runs, &metric, None).unwrap();
            assert_eq!(attr.reference, act.reference);
            assert_close_rel(
                &format!("{name} {kind:?} step {step}"),
                &attr.per_pair,
                &act.per_pair,
                2e-2,
            );
        }
    }
}

#[test]
fn attribution_refuses_bad_inputs() {
    let m = model("tiny-llama");
    let v = m.cfg.vocab_size as u32;
    let metric = Metric {
        kind: MetricKind::LogitDiff,
        syc: 5,
        anti: 17,
    };
    let ps = pairs(3, 2, v, false);
    let runs = clean_runs(&m, &ps, &metric, 4, None).unwrap();
    // Unequal lengths: refused by index for all-position attribution, fine at the last.
    let e = attribution_patching(&m, &ps, &runs, &metric, AttrPositions::All, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("#0"), "{e}");
    assert!(attribution_patching(&m, &ps, &runs, &metric, AttrPositions::Last, None).is_ok());
    // Runs that do not match the pairs.
    let e = attribution_patching(&m, &ps, &runs[..1], &metric, AttrPositions::Last, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clean runs"), "{e}");
    let swapped = vec![runs[1].clone(), runs[0].clone()];
    assert!(attribution_patching(&m, &ps, &swapped, &metric, AttrPositions::Last, None).is_err());
    // Positions past the end; a label outside the vocabulary.
    let eq = pairs(5, 2, v, true);
    let runs = clean_runs(&m, &eq, &metric, 4, None).unwrap();
    let e = attribution_patching(
        &m,
        &eq,
        &runs,
        &metric,
        AttrPositions::At(vec![3, 99]),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("99"), "{e}");
    let bad = Metric { syc: v, ..metric };
    assert!(attribution_patching(&m, &eq, &runs, &bad, AttrPositions::Last, None).is_err());
    assert!(attribution_patching(&m, &[], &[], &metric, AttrPositions::Last, None).is_err());
    // At(every position) is All.
    let all = attribution_patching(&m, &eq, &runs, &metric, AttrPositions::All, None).unwrap();
    let at = attribution_patching(
        &m,
        &eq,
        &runs,
        &metric,
        AttrPositions::At((0..eq[0].reference.len()).collect()),
        None,
    )
    .unwrap();
    assert_eq!(all, at);
}

#[test]
fn spearman_matches_hand_computed_values() {
    let close = |x: f64, y: f64| assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    close(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
    close(spearman(&[1.0, 2.0, 3.0], &[3.0, -1.0, -7.0]), -1.0);
    // Monotone but non-linear: ranks only.
    close(spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 1e6]), 1.0);
    // Wikipedia's example (no ties): sum d^2 = 194, rho = 1 - 6 * 194 / (10 * 99).
    let iq = [
        106.0, 86.0, 100.0, 101.0, 99.0, 103.0, 97.0, 113.0, 112.0, 110.0,
    ];
    let tv = [7.0, 0.0, 27.0, 50.0, 28.0, 29.0, 20.0, 12.0, 6.0, 17.0];
    close(spearman(&iq, &tv), 1.0 - 6.0 * 194.0 / 990.0);
    // Ties get average ranks: b ranks [1, 2, 3.5, 5, 3.5]; rho = 8 / sqrt(10 * 9.5).
    close(
        spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]),
        8.0 / 95f64.sqrt(),
    );
    // Ties on both sides: a ranks [1.5, 1.5, 3, 4], b ranks [1, 2.5, 2.5, 4];
    // deviations a (-1, -1, .5, 1.5), b (-1.5, 0, 0, 1.5): 3.75 / sqrt(4.5 * 4.5).
    close(
        spearman(&[0.0, 0.0, 1.0, 2.0], &[-3.0, 4.0, 4.0, 9.0]),
        3.75 / 4.5,
    );
    // Symmetric in its arguments.
    close(spearman(&tv, &iq), spearman(&iq, &tv));
    // Undefined cases.
    assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    assert!(spearman(&[1.0], &[2.0]).is_nan());
    assert!(spearman(&[1.0, f64::NAN], &[1.0, 2.0]).is_nan());
}
