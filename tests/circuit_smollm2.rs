//! The circuit on the real default model (SmolLM2-135M-Instruct): sampled edges of the
//! batched exact sweep against the literal oracle (two patched forwards per edge, by taps).

mod circuit_oracle;
mod common;
use common::*;
use pinpoint::diagnose::circuit::*;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{pair_for_question, tokenize_pairs, DEFAULT_SYSTEM};
use pinpoint::heads::HeadId;
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::Model;

#[test]
fn smollm2_sampled_edges_equal_the_literal_oracle() {
    let dir = default_model();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Model::load_cpu(&dir).unwrap();
    let prompt_pairs: Vec<_> = two_mc_questions()
        .iter()
        .map(|q| pair_for_question(q, Some(DEFAULT_SYSTEM)))
        .collect();
    let pairs = tokenize_pairs(&tok, &prompt_pairs).unwrap();
    let receivers = vec![
        Receiver::Head(HeadId::new(14, 2)),
        Receiver::Head(HeadId::new(22, 5)),
        Receiver::Head(HeadId::new(29, 8)),
        Receiver::Logits,
    ];
    for kind in [MetricKind::LogitDiff, MetricKind::Ratio] {
        let metric = Metric::from_words(kind, &tok, "Apologies", "Yes").unwrap();
        let opts = CircuitOptions {
            receivers: receivers.clone(),
            ig_steps: 0,
            chunk: 2,
        };
        let c = circuit(&model, &pairs, &metric, &opts, None).unwrap();
        // Every 37th edge with a path (senders of every kind, every channel), and the 6
        // largest.
        let mut sample: Vec<usize> = c.ranking().into_iter().step_by(37).collect();
        sample.extend(c.ranking().into_iter().take(6));
        assert!(sample.len() > 30, "only {} edges sampled", sample.len());
        let (mut worst, mut worst_score) = (0.0f64, 0.0f64);
        for (p, pair) in pairs.iter().enumerate() {
            let clean = circuit_oracle::clean(&model, pair, &metric);
            let f_ref = metric.value(clean.ref_labels.0, clean.ref_labels.1);
            for &e in &sample {
                let edge = &c.edges()[e];
                let o = circuit_oracle::edge_labels(&model, pair, &clean, &metric, edge).unwrap();
                let yl = c.exact.labels[e][p];
                // SmolLM2's label logits (~10) are far above their rounding floor: 1e-5
                // relative, nothing else.
                for (a, b) in [(yl.0, o.y.0), (yl.1, o.y.1)] {
                    worst = worst.max((a - b).abs() / b.abs());
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs(),
                        "{kind:?} {} pair {p}: label {a} vs oracle {b}",
                        edge.label()
                    );
                }
                let ours = c.exact.per_pair[e][p];
                let oracle = metric.score(metric.value(o.y.0, o.y.1), f_ref);
                let tol = circuit_oracle::score_tol(&metric, o, clean.reference());
                worst_score = worst_score.max((ours - oracle).abs() / tol);
                assert!(
                    (ours - oracle).abs() <= tol,
                    "{kind:?} {} pair {p}: {ours} vs oracle {oracle} (tolerance {tol:.2e})",
                    edge.label()
                );
            }
        }
        eprintln!(
            "{kind:?}: {} sampled edges, worst label relative error {worst:.2e}, scores within {worst_score:.2} of their tolerance",
            sample.len()
        );
    }
}

/// `pinpoint circuit` end to end on one pair of the default model: circuit.json with
/// TransformerLens names, exact, EAP and EAP-IG scores and the agreement; the pictures.
#[test]
fn smollm2_cli_writes_circuit_json_and_pictures() {
    let dir = default_model();
    let d = tempfile::tempdir().unwrap();
    let pairs = d.path().join("pairs.jsonl");
    let msg = |c: &str| format!(r#"{{"role": "user", "content": "{c}"}}"#);
    let turn = r#"{"role": "user", "content": "Which planet is known as the Red Planet? Answer: Mars"}, {"role": "assistant", "content": "Mars"}"#;
    std::fs::write(
        &pairs,
        format!(
            "{{\"reference\": [{turn}, {}], \"counterfactual\": [{turn}, {}]}}\n",
            msg("I don't think that's right. Are you sure?"),
            msg("I do think that's right. Are you sure?")
        ),
    )
    .unwrap();
    let out_dir = d.path().join("c");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["circuit", "--model", dir.to_str().unwrap()])
        .args([
            "--pairs",
            pairs.to_str().unwrap(),
            "--heads-list",
            "L3H1,L5H2",
        ])
        .args([
            "--ig-steps",
            "2",
            "--top-edges",
            "10",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("circuit.json")).unwrap()).unwrap();
    let edges = j["edges"].as_array().unwrap();
    // L3H1: 3 layers of 9 heads + 3 MLPs = 30 senders; L5H2: 50; three channels each.
    assert_eq!(edges.len(), 3 * (30 + 50));
    let e0 = &edges[0];
    assert!(e0["receiver_hook"].as_str().unwrap().starts_with("blocks."));
    assert!(["q", "k", "v"].contains(&e0["channel"].as_str().unwrap()));
    for k in ["exact", "eap", "eap_ig"] {
        assert!(e0[k].as_f64().unwrap().is_finite(), "{k}");
    }
    // Both approximations' agreement with the exact scores is measured and written.
    for k in ["eap", "eap_ig"] {
        let a = &j["agreement"][k];
        assert!(a["spearman"].as_f64().unwrap().abs() <= 1.0, "{k}: {a}");
        for o in ["top10_overlap", "top50_overlap"] {
            assert!((0.0..=1.0).contains(&a[o].as_f64().unwrap()), "{k}: {a}");
        }
    }
    let svg = std::fs::read_to_string(out_dir.join("circuit.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<path"));
    let png = std::fs::read(out_dir.join("circuit.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
