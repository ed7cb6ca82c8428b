//! Path and activation patching: the fast batched forms against their literal oracles
//! (one patched forward per head), and a planted circuit the sweep must find.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::diagnose::knockout::{knockout_curve, mean_z};
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::TokenPair;
use pinpoint::diagnose::path_patching::*;
use pinpoint::heads::{HeadId, HookPoint, Patch, Positions, Taps};
use pinpoint::Model;

fn model(name: &str) -> Model<CpuBackend> {
    Model::load_cpu(&fixture(name)).unwrap()
}

/// Pairs of random ids; the counterfactual replaces 2 tokens by 1 (unequal lengths, as
/// "don't" vs "do"), keeping the same last tokens.
fn pairs(seed: u64, n: usize, vocab: u32, equal: bool) -> Vec<TokenPair> {
    random_pairs(
        seed,
        n,
        vocab,
        |i| 9 + i % 3,
        |c, next| {
            let len = c.len();
            if equal {
                c[len / 2] = next();
            } else {
                c.splice(len / 2..len / 2 + 2, [next()]);
            }
        },
    )
}

fn assert_scores_close(what: &str, a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) {
    let mut nonzero = 0;
    for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
        for (p, (x, y)) in ra.iter().zip(rb).enumerate() {
            assert!(
                x.is_finite() && y.is_finite(),
                "{what}: head {i} pair {p}: {x} vs {y}"
            );
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what}: head {i} pair {p}: fast {x} vs oracle {y}"
            );
            if y.abs() > 1e-3 {
                nonzero += 1;
            }
        }
    }
    assert!(
        nonzero > a.len() / 2,
        "{what}: too few non-zero scores ({nonzero}) for the test to mean anything"
    );
}

#[test]
fn fast_path_patching_equals_the_literal_oracle() {
    for name in [
        "tiny-llama",
        "tiny-mistral",
        "tiny-llama3",
        "tiny-dynamic",
        "tiny-yarn",
        "tiny-qwen2",
        "tiny-qwen3",
    ] {
        let m = model(name);
        let ps = pairs(7, 3, m.cfg.vocab_size as u32, false);
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
            let runs = clean_runs(&m, &ps, &metric, 2, None).unwrap();
            for freeze in [false, true] {
                let fast = path_patching_fast(&m, &runs, &metric, freeze, 2, None).unwrap();
                let oracle = path_patching_oracle(&m, &ps, &runs, &metric, freeze, None).unwrap();
                assert_eq!(fast.reference, oracle.reference);
                // Ratio scores are percent changes: 1e-3 there is ~1e-5 of the metric.
                let tol = if kind == MetricKind::LogitDiff {
                    1e-4
                } else {
                    1e-3
                };
                assert_scores_close(
                    &format!("{name} {kind:?} freeze={freeze}"),
                    &fast.per_pair,
                    &oracle.per_pair,
                    tol,
                );
            }
        }
    }
}

#[test]
fn activation_patching_equals_one_full_forward_per_head() {
    for name in [
        "tiny-llama",
        "tiny-mistral",
        "tiny-yarn",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-dynamic",
    ] {
        let m = model(name);
        let metric = Metric {
            kind: MetricKind::LogitDiff,
            syc: 3,
            anti: 40,
        };
        let d = m.head_dim();
        // Last position, unequal lengths.
        let ps = pairs(11, 2, m.cfg.vocab_size as u32, false);
        let runs = clean_runs(&m, &ps, &metric, 8, None).unwrap();
        let fast = match activation_patching_last(&m, &ps, &runs, &metric, None) {
            Ok(f) => f,
            // Dynamic NTK: a cached prefix would be rotated with its own length; refused.
            Err(e) if m.cfg.rope.length_dependent() => {
                assert!(format!("{e}").contains("rope_scaling"), "{e}");
                check_activation_at_all_positions(&m, &metric, d);
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        let mut brute = vec![vec![0.0; ps.len()]; fast.heads.len()];
        for (i, head) in fast.heads.iter().enumerate() {
            for (p, pair) in ps.iter().enumerate() {
                let z = runs[p].z_cf[head.layer][head.head * d..(head.head + 1) * d].to_vec();
                let taps = Taps::new().patch_z(*head, d, 0, pair.ref_last(), z);
                let out = m
                    .forward(std::slice::from_ref(&pair.reference), &taps)
                    .unwrap();
                let f = metric.of_logits(out.logits.row_at(0));
                brute[i][p] = metric.score(f, fast.reference[p]);
            }
        }
        assert_scores_close(
            &format!("{name} activation last"),
            &fast.per_pair,
            &brute,
            1e-4,
        );

        check_activation_at_all_positions(&m, &metric, d);
    }
}

/// Activation patching at all positions (whole forwards) against one forward per head.
fn check_activation_at_all_positions(m: &Model<CpuBackend>, metric: &Metric, d: usize) {
    let name = &m.cfg.model_type;
    {
        // All positions, equal lengths: z of the head at every position from X_c.
        let ps = pairs(13, 2, m.cfg.vocab_size as u32, true);
        let runs = clean_runs(m, &ps, metric, 8, None).unwrap();
        let fast =
            activation_patching_positions(m, &ps, &runs, metric, &Positions::All, None).unwrap();
        let cfs: Vec<Vec<u32>> = ps.iter().map(|p| p.counterfactual.clone()).collect();
        let zc = m
            .forward(
                &cfs,
                &Taps::new().capture_all_z(m.n_layers(), Positions::All),
            )
            .unwrap();
        let mut brute = vec![vec![0.0; ps.len()]; fast.heads.len()];
        for (i, head) in fast.heads.iter().enumerate() {
            for (p, pair) in ps.iter().enumerate() {
                let mut patches = vec![];
                for pos in 0..pair.reference.len() {
                    let row = zc.z(head.layer).unwrap().row(p, pos).unwrap();
                    let values = row[head.head * d..(head.head + 1) * d].to_vec();
                    patches.push(Patch {
                        point: HookPoint::Z(head.layer),
                        seq: 0,
                        pos,
                        col0: head.head * d,
                        values,
                    });
                }
                let out = m
                    .forward(
                        std::slice::from_ref(&pair.reference),
                        &Taps {
                            patches,
                            ..Taps::new()
                        },
                    )
                    .unwrap();
                brute[i][p] =
                    metric.score(metric.of_logits(out.logits.row_at(0)), fast.reference[p]);
            }
        }
        assert_scores_close(
            &format!("{name} activation all"),
            &fast.per_pair,
            &brute,
            1e-4,
        );
        // Unequal pairs are refused by index.
        let bad = pairs(1, 2, m.cfg.vocab_size as u32, false);
        let e = activation_patching_positions(m, &bad, &runs, metric, &Positions::All, None)
            .unwrap_err();
        assert!(e.to_string().contains("#0"), "{e}");
    }
}

#[test]
fn planted_head_is_found_and_its_knockout_moves_the_metric() {
    let dir = fixture("tiny-llama");
    let (cfg, mut w, _) = pinpoint::model::checkpoint::load_model_dir(&dir).unwrap();
    let planted = HeadId::new(1, 2);
    let d = cfg.head_dim;
    // Only the planted head writes to the residual stream: every other head's o_proj
    // columns and every MLP's down_proj are zero.
    for (l, lw) in w.layers.iter_mut().enumerate() {
        let cols = lw.wo.shape[1];
        for r in 0..lw.wo.shape[0] {
            for c in 0..cols {
                if !(l == planted.layer && c / d == planted.head) {
                    lw.wo.data[r * cols + c] = 0.0;
                }
            }
        }
        lw.w_down.data.iter_mut().for_each(|x| *x = 0.0);
    }
    let m = Model::from_host(cfg.clone(), &w, CpuBackend).unwrap();
    let ps = pairs(3, 2, cfg.vocab_size as u32, false);
    // Labels: the tokens whose logit the reference raises most / least over the counterfactual.
    let clean = m
        .forward(
            &[ps[0].reference.clone(), ps[0].counterfactual.clone()],
            &Taps::new(),
        )
        .unwrap();
    let diff: Vec<f32> = clean
        .logits
        .row_at(0)
        .iter()
        .zip(clean.logits.row_at(1))
        .map(|(a, b)| a - b)
        .collect();
    let syc = diff
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32;
    let anti = diff
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32;
    let metric = Metric {
        kind: MetricKind::LogitDiff,
        syc,
        anti,
    };
    let runs = clean_runs(&m, &ps[..1], &metric, 8, None).unwrap();
    let scores = path_patching_fast(&m, &runs, &metric, false, 8, None).unwrap();
    let rank = scores.ranking();
    assert_eq!(
        scores.heads[rank[0]], planted,
        "the planted head must rank first"
    );
    assert!(
        scores.mean(rank[0]) < -1e-3,
        "its score must be negative: {}",
        scores.mean(rank[0])
    );
    for &i in &rank[1..] {
        assert!(
            scores.mean(i).abs() < 1e-5,
            "{} scored {}",
            scores.heads[i],
            scores.mean(i)
        );
    }
    // Knockout: ablating the planted head moves the metric; ablating any other does not.
    let refs = vec![ps[0].reference.clone()];
    let cfs = vec![ps[0].counterfactual.clone()];
    let order: Vec<HeadId> = rank.iter().map(|&i| scores.heads[i]).collect();
    let means = mean_z(&m, &cfs, &order).unwrap();
    let curve = knockout_curve(&m, &refs, &means, &order, &[0, 1, 2], &metric).unwrap();
    let f0 = curve[0].metric_mean;
    assert!(
        (curve[1].metric_mean - f0).abs() > 1e-2,
        "knockout of the planted head: {f0} -> {}",
        curve[1].metric_mean
    );
    assert!(
        (curve[2].metric_mean - curve[1].metric_mean).abs() < 1e-5,
        "a second (dead) head changed the metric"
    );
    let other: Vec<HeadId> = order[1..].to_vec();
    let curve = knockout_curve(&m, &refs, &means, &other, &[0, 4], &metric).unwrap();
    assert!((curve[1].metric_mean - curve[0].metric_mean).abs() < 1e-5);
}

#[test]
fn heads_json_feeds_tune_and_is_refused_by_another_model() {
    use pinpoint::diagnose::run::{diagnose_tokens, DiagnoseConfig};
    let m = model("tiny-llama");
    let ps = pairs(5, 2, m.cfg.vocab_size as u32, false);
    let metric = Metric {
        kind: MetricKind::LogitDiff,
        syc: 1,
        anti: 2,
    };
    let d = diagnose_tokens(&m, &ps, &metric, &DiagnoseConfig::default(), false).unwrap();
    assert_eq!(d.heads.len(), m.all_heads().len());
    assert!(
        d.heads.windows(2).all(|w| w[0].score <= w[1].score),
        "ranked ascending"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = serde_json::json!({"source": "test"});
    pinpoint::diagnose::report::write_diagnosis(
        tmp.path(),
        &m.cfg,
        "tiny-llama",
        &data,
        ("a", "b"),
        &d,
        4,
    )
    .unwrap();
    for f in [
        "heads.json",
        "heads.csv",
        "heatmap.svg",
        "heatmap.png",
        "summary.md",
    ] {
        assert!(
            tmp.path().join(f).metadata().unwrap().len() > 0,
            "{f} missing or empty"
        );
    }
    let top = pinpoint::tune::read_heads_json(&tmp.path().join("heads.json"), &m.cfg, 3).unwrap();
    assert_eq!(top, d.top(3));
    let other = model("tiny-mistral");
    let e =
        pinpoint::tune::read_heads_json(&tmp.path().join("heads.json"), &other.cfg, 3).unwrap_err();
    assert!(format!("{e:#}").contains("another model"), "{e:#}");
    // No pairs at all is an error, not an empty report.
    assert!(diagnose_tokens(&m, &[], &metric, &DiagnoseConfig::default(), false).is_err());
}
