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
    random_pairs(
        seed,
        n,
        vocab,
        |i| 9 + i % 3,
        |c, next| {
            let len = c.len();
            c.splice(len - 4..len - 2, [next()]);
        },
    )
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

/// The oracle's labels of every edge on every pair (`[pair][edge]`, None without a path),
/// and each pair's clean labels.
type OracleRun = (
    Vec<Vec<Option<circuit_oracle::Labels>>>,
    Vec<circuit_oracle::Labels>,
);

fn oracle_run(
    m: &Model<CpuBackend>,
    ps: &[TokenPair],
    metric: &Metric,
    edges: &[Edge],
) -> OracleRun {
    let mut labels = vec![];
    let mut clean = vec![];
    for pair in ps {
        let c = circuit_oracle::clean(m, pair, metric);
        labels.push(
            edges
                .iter()
                .map(|e| circuit_oracle::edge_labels(m, pair, &c, metric, e))
                .collect(),
        );
        clean.push(c.reference());
    }
    (labels, clean)
}

/// Batched against oracle, every edge into every receiver of every fixture: each label logit
/// to 1e-5 relative, or to its f32 rounding floor where that is larger (`circuit_oracle::
/// label_tol`); each score likewise (`score_tol`); edges without a path score exactly 0.
/// The floor is checked to be what two exact computations need: the oracle on the other CPU
/// kernel set (fast or reference: the same sums in another order) must meet it against the
/// oracle on the set in use (the switch is process-wide; the other tests here hold under
/// either set).
#[test]
fn exact_scores_equal_the_literal_oracle() {
    use circuit_oracle::{floor, label_tol, score_tol, FLOOR_UNITS};
    use pinpoint::backend::cpu::select::{kernels, set_kernels, CpuKernels};
    let unit = |d: f64, cond: f64| d / (f32::EPSILON as f64 * cond);
    for name in FIXTURES {
        let m = model(name);
        let ps = pairs(11, 3, m.cfg.vocab_size as u32);
        let labels_of = |kind| Metric {
            kind,
            syc: 5,
            anti: 17,
        };
        let edges = circuit(
            &m,
            &ps,
            &labels_of(MetricKind::LogitDiff),
            &opts(all_receivers(&m)),
            None,
        )
        .unwrap()
        .edges()
        .to_vec();
        // The labels do not depend on the metric's kind: one oracle run serves all three.
        let (oracle, clean) = oracle_run(&m, &ps, &labels_of(MetricKind::LogitDiff), &edges);
        // The other kernel set than the one in use (PINPOINT_CPU_KERNELS may choose either).
        let in_use = kernels();
        set_kernels(match in_use {
            CpuKernels::Fast => CpuKernels::Reference,
            CpuKernels::Reference => CpuKernels::Fast,
        });
        let (other, _) = oracle_run(&m, &ps, &labels_of(MetricKind::LogitDiff), &edges);
        set_kernels(in_use);
        let mut floor_seen = 0.0f64;
        for (a, b) in oracle.iter().flatten().zip(other.iter().flatten()) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            for (ya, yb, cond) in [(a.y.0, b.y.0, a.cond.0), (a.y.1, b.y.1, a.cond.1)] {
                floor_seen = floor_seen.max(unit((ya - yb).abs(), cond));
                assert!(
                    (ya - yb).abs() <= floor(cond),
                    "{name}: the oracle on two kernel sets differs by {:.1} eps*cond, more than the floor of {FLOOR_UNITS}: raise it",
                    unit((ya - yb).abs(), cond)
                );
            }
        }
        for kind in [
            MetricKind::LogitDiff,
            MetricKind::Ratio,
            MetricKind::ProbRatio,
        ] {
            let metric = labels_of(kind);
            let c = circuit(&m, &ps, &metric, &opts(all_receivers(&m)), None).unwrap();
            assert_eq!(c.edges(), &edges[..]);
            let (mut checked, mut strict, mut n_labels) = (0, 0, 0);
            let (mut worst_unit, mut worst_rel, mut worst_score) = (0.0f64, 0.0f64, 0.0f64);
            for (p, clean) in clean.iter().enumerate() {
                for (e, edge) in edges.iter().enumerate() {
                    let ours = c.exact.per_pair[e][p];
                    let yl = c.exact.labels[e][p];
                    // Without a path: score 0, labels the null row's (the clean run's by
                    // another path).
                    let o = oracle[p][e].unwrap_or(*clean);
                    for (a, b, cond) in [(yl.0, o.y.0, o.cond.0), (yl.1, o.y.1, o.cond.1)] {
                        let err = (a - b).abs();
                        n_labels += 1;
                        worst_unit = worst_unit.max(unit(err, cond));
                        if 1e-5 * b.abs() >= floor(cond) {
                            strict += 1;
                            worst_rel = worst_rel.max(err / b.abs());
                        }
                        assert!(
                            err <= label_tol(b, cond),
                            "{name} {kind:?} {} pair {p}: label {a} vs oracle {b} ({:.1} eps*cond, cond {cond:.3})",
                            edge.label(),
                            unit(err, cond)
                        );
                    }
                    if oracle[p][e].is_none() {
                        assert_eq!(ours, 0.0, "{name}: {} has no path", edge.label());
                        continue;
                    }
                    let score = metric.score(
                        metric.value(o.y.0, o.y.1),
                        metric.value(clean.y.0, clean.y.1),
                    );
                    let tol = score_tol(&metric, o, *clean);
                    worst_score = worst_score.max((ours - score).abs() / tol);
                    assert!(
                        (ours - score).abs() <= tol,
                        "{name} {kind:?} {} pair {p}: {ours} vs oracle {score} (tolerance {tol:.2e})",
                        edge.label()
                    );
                    checked += 1;
                }
            }
            assert!(checked > 100, "{name}: only {checked} edges checked");
            eprintln!(
                "{name} {kind:?}: {checked} edges; labels within {worst_unit:.1} eps*cond (the two oracles: {floor_seen:.1}), {strict} of {n_labels} held to 1e-5 relative, within {worst_rel:.1e}; scores within {worst_score:.2} of their tolerance"
            );
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
