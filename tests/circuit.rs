//! Circuits on the tiny fixtures: the batched exact edge scores against the literal oracle
//! (one patched forward pair per edge, by taps), edges without a path, a receiver the metric
//! does not depend on, and EAP's first-order term against the exact scores' slope.

// Scores are indexed [edge][pair]; loops over pair indices read clearest.
#![allow(clippy::needless_range_loop)]

mod circuit_oracle;
mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::diagnose::circuit::*;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::TokenPair;
use pinpoint::heads::HeadId;
use pinpoint::Model;

fn model(name: &str) -> Model<CpuBackend> {
    Model::load_cpu(&fixture(name)).unwrap()
}

/// Pairs of random ids; the counterfactual replaces 2 tokens by 1 near the end (unequal
/// lengths), keeping the last token.
pub fn pairs(seed: u64, n: usize, vocab: u32) -> Vec<TokenPair> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % vocab as u64) as u32
    };
    (0..n)
        .map(|i| {
            let len = 9 + i % 3;
            let reference: Vec<u32> = (0..len).map(|_| next()).collect();
            let mut counterfactual = reference.clone();
            counterfactual.splice(len - 4..len - 2, [next()]);
            TokenPair {
                index: i,
                source: format!("test:{i}"),
                reference,
                counterfactual,
            }
        })
        .collect()
}

/// Every head of layers >= 1, and the logits.
fn all_receivers(m: &Model<CpuBackend>) -> Vec<Receiver> {
    let mut v: Vec<Receiver> = m
        .all_heads()
        .into_iter()
        .filter(|h| h.layer >= 1)
        .map(Receiver::Head)
        .collect();
    v.push(Receiver::Logits);
    v
}

fn opts(receivers: Vec<Receiver>) -> CircuitOptions {
    CircuitOptions {
        receivers,
        ig_steps: 3,
        chunk: 2,
    }
}

const FIXTURES: [&str; 8] = [
    "tiny-llama",
    "tiny-mistral",
    "tiny-llama3",
    "tiny-dynamic",
    "tiny-yarn",
    "tiny-qwen2",
    "tiny-linear",
    // Per-head q/k norms between the projection and RoPE (the channel recompute applies them).
    "tiny-qwen3",
];

/// The batched label logits of every edge equal the oracle's to 1e-5 relative, and each
/// score equals the oracle's score to 1e-5 relative plus what the labels' own rounding
/// allows (see the comment at `slack`).
#[test]
fn exact_scores_equal_the_literal_oracle() {
    for name in FIXTURES {
        let m = model(name);
        let ps = pairs(11, 3, m.cfg.vocab_size as u32);
        for kind in [
            MetricKind::LogitDiff,
            MetricKind::Ratio,
            MetricKind::ProbRatio,
        ] {
            let metric = Metric {
                kind,
                syc: 5,
                anti: 17,
            };
            let c = circuit(&m, &ps, &metric, &opts(all_receivers(&m)), None).unwrap();
            let mut checked = 0;
            let (mut worst, mut worst_abs, mut null_abs) = (0.0f64, 0.0f64, 0.0f64);
            for (p, pair) in ps.iter().enumerate() {
                let clean = circuit_oracle::clean(&m, pair, &metric);
                let f_ref = metric.value(clean.ref_labels.0, clean.ref_labels.1);
                for (e, edge) in c.edges().iter().enumerate() {
                    let ours = c.exact.per_pair[e][p];
                    let Some(y) = circuit_oracle::edge_labels(&m, pair, &clean, &metric, edge)
                    else {
                        assert_eq!(ours, 0.0, "{name}: {} has no path", edge.label());
                        // Its labels are the null row's: the clean run's, by another path.
                        let (a, b) = (c.exact.labels[e][p], clean.ref_labels);
                        null_abs = null_abs.max((a.0 - b.0).abs().max((a.1 - b.1).abs()));
                        continue;
                    };
                    let yl = c.exact.labels[e][p];
                    for (a, b) in [(yl.0, y.0), (yl.1, y.1)] {
                        let rel = (a - b).abs() / b.abs().max(1e-30);
                        worst = worst.max(rel);
                        // 1e-5 relative, of at least 1: the tiny models' label logits are
                        // ~0.1, sums of terms ~1 whose f32 rounding (~1e-7 each) is not
                        // relative to the small sum.
                        worst_abs = worst_abs.max((a - b).abs());
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                            "{name} {kind:?} {} pair {p}: label {a} vs oracle {b}",
                            edge.label()
                        );
                    }
                    let oracle = metric.score(metric.value(y.0, y.1), f_ref);
                    // The scores are differences of metrics of f32 label logits: besides
                    // 1e-5 relative, they may differ by the score's change when each label
                    // moves by 64 ulps of f32 (the two runs round differently).
                    let eps = 64.0 * f32::EPSILON as f64;
                    let (ys, ya) = (y.0.abs().max(1.0), y.1.abs().max(1.0));
                    let (gs, ga) = pinpoint::diagnose::attribution::metric_grad(&metric, y.0, y.1);
                    let unit =
                        pinpoint::diagnose::attribution::score_per_unit(&metric, f_ref).abs();
                    let slack = unit * eps * (gs.abs() * ys + ga.abs() * ya);
                    assert!(
                        (ours - oracle).abs() <= 1e-5 * oracle.abs() + slack,
                        "{name} {kind:?} {} pair {p}: {ours} vs oracle {oracle} (slack {slack})",
                        edge.label()
                    );
                    checked += 1;
                }
            }
            assert!(checked > 100, "{name}: only {checked} edges checked");
            eprintln!("{name} {kind:?}: {checked} edges, worst label error {worst:.2e} relative, {worst_abs:.2e} absolute; null rows vs clean {null_abs:.2e}; labels {:?}", c.exact.labels[0][0]);
        }
    }
}

/// Edges from the receiver's own or a later layer score exactly 0 (exact, EAP, EAP-IG); a
/// receiver whose output the metric cannot see (its W_O columns zeroed) scores exactly 0
/// on every edge into it, while the other heads of its layer do not.
#[test]
fn edges_without_a_path_or_effect_score_exactly_zero() {
    let base = model("tiny-llama");
    let mut w = base.host_weights().unwrap();
    let (dh, h_n) = (base.head_dim(), base.n_heads());
    let deaf = HeadId::new(1, 2);
    let wo = &mut w.layers[deaf.layer].wo; // [d, H*D]
    for row in wo.data.chunks_mut(h_n * dh) {
        row[deaf.head * dh..(deaf.head + 1) * dh].fill(0.0);
    }
    let m = Model::from_host(base.cfg.clone(), &w, CpuBackend).unwrap();
    let ps = pairs(5, 3, m.cfg.vocab_size as u32);
    let metric = Metric {
        kind: MetricKind::Ratio,
        syc: 5,
        anti: 17,
    };
    let live = HeadId::new(1, 0);
    let c = circuit(
        &m,
        &ps,
        &metric,
        &opts(vec![Receiver::Head(deaf), Receiver::Head(live)]),
        None,
    )
    .unwrap();
    let ig = c.eap_ig.as_ref().unwrap();
    let mut live_nonzero = 0;
    for (e, edge) in c.edges().iter().enumerate() {
        for p in 0..ps.len() {
            let scores = [c.exact.per_pair[e][p], c.eap[e][p], ig[e][p]];
            if !edge.has_path(m.n_layers()) || edge.receiver == Receiver::Head(deaf) {
                assert_eq!(scores, [0.0; 3], "{} pair {p}", edge.label());
            } else if scores.iter().all(|s| s.abs() > 1e-6) {
                live_nonzero += 1;
            }
        }
    }
    // Senders of layer 0 (4 heads and an MLP) into 3 channels of `live`, 3 pairs.
    assert!(live_nonzero > 30, "only {live_nonzero} live edges scored");
}

/// EAP is the exact score's slope: with every counterfactual value moved only by +-eps of
/// its difference from the reference (z, MLP outputs, residuals), the central difference of
/// the exact scores over 2 eps equals the EAP score of the full difference.
#[test]
fn eap_is_the_slope_of_the_exact_score() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
        let m = model(name);
        let ps = pairs(3, 2, m.cfg.vocab_size as u32);
        let metric = Metric {
            kind: MetricKind::LogitDiff,
            syc: 5,
            anti: 17,
        };
        let mut receivers: Vec<Receiver> = m
            .all_heads()
            .into_iter()
            .filter(|h| h.layer == 2)
            .map(Receiver::Head)
            .collect();
        receivers.push(Receiver::Logits);
        let o = opts(receivers.clone());
        let runs = pair_runs(&m, &ps, &metric, &[2], 2).unwrap();
        let senders = Sender::all(m.n_layers(), m.n_heads());
        let edges = edges_of(&receivers, &senders);
        let eap = approx_scores(&m, &runs, &metric, &senders, &edges, None, &o).unwrap();
        let eps = 1e-2f32;
        let moved = |s: f32| -> Vec<PairRun> {
            let mv = |r: &[Vec<f32>], c: &[Vec<f32>]| -> Vec<Vec<f32>> {
                r.iter()
                    .zip(c)
                    .map(|(r, c)| r.iter().zip(c).map(|(r, c)| r + s * (c - r)).collect())
                    .collect()
            };
            runs.iter()
                .map(|r| PairRun {
                    z_cf: mv(&r.z_ref, &r.z_cf),
                    mlp_cf: mv(&r.mlp_ref, &r.mlp_cf),
                    resid_cf: mv(&r.resid_pre, &r.resid_cf),
                    ..r.clone()
                })
                .collect()
        };
        let plus = exact_scores(&m, &moved(eps), &metric, &senders, &edges, 2, None).unwrap();
        let minus = exact_scores(&m, &moved(-eps), &metric, &senders, &edges, 2, None).unwrap();
        let scale = eap.iter().flatten().fold(0.0f64, |a, b| a.max(b.abs()));
        assert!(scale > 1e-3, "{name}: EAP scores all ~0");
        for (e, edge) in edges.iter().enumerate() {
            for p in 0..ps.len() {
                let slope = (plus.per_pair[e][p] - minus.per_pair[e][p]) / (2.0 * eps as f64);
                let a = eap[e][p];
                assert!(
                    (slope - a).abs() <= 2e-3 * scale + 1e-3 * a.abs(),
                    "{name} {} pair {p}: exact slope {slope} vs EAP {a}",
                    edge.label()
                );
            }
        }
    }
}

/// `pinpoint circuit` refuses positions other than the last, and a run without receivers,
/// before loading anything, naming the flag.
#[test]
fn cli_refuses_other_positions_and_no_receivers() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .arg("circuit")
            .args(args)
            .args(["--out", d.path().join("c").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--heads-list", "L1H0", "--positions", "all"]);
    assert!(e.contains("--positions") && e.contains("last"), "{e}");
    let e = run(&["--n", "2"]);
    assert!(e.contains("--heads") && e.contains("--logits"), "{e}");
    assert!(!d.path().join("c").exists(), "nothing may be written");
}
