//! The real default model (SmolLM2-135M-Instruct, imported from its GGUF) against HF
//! transformers loading the same GGUF: chat-template token ids, last-position logits,
//! 32 greedy tokens through the KV cache, z at the last position, and a head patch.

mod common;
use common::*;
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::{HeadId, Positions, Taps};
use pinpoint::model::tokenizer::{ChatMessage, Tokenizer};
use pinpoint::Model;

fn expected() -> serde_json::Value {
    let p = fixture("smollm2").join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_prompts_logits_greedy_and_patch_match_hf() {
    let dir = default_model();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Model::load_cpu(&dir).unwrap();
    let exp = expected();
    let prompts = exp["prompts"].as_array().unwrap();
    let refs = read_refs(&fixture("smollm2").join("last_logits.safetensors"));
    let last = &refs["last_logits"];
    let v = model.cfg.vocab_size;

    let mut all_ids = vec![];
    for p in prompts {
        let messages: Vec<ChatMessage> = serde_json::from_value(p["messages"].clone()).unwrap();
        let ids = tok.encode_chat(&messages, true).unwrap();
        assert_eq!(
            ids,
            ids_of(&p["ids"]),
            "{}: token ids differ from HF",
            p["name"]
        );
        all_ids.push(ids);
    }
    // Last-position logits, all prompts in one packed batch of different lengths.
    let out = model.forward(&all_ids, &Taps::new()).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let err = rel_err(out.logits.row_at(i), &last.data[i * v..(i + 1) * v]);
        assert!(
            err <= 1e-3,
            "{}: last logits relative error {err:e}",
            p["name"]
        );
    }
    // 32 greedy tokens, EOS not stopping (as the fixture was made), batched with the cache.
    let cfg = GenConfig {
        max_new_tokens: 32,
        ..Default::default()
    };
    let gens = generate(&model, &all_ids, &cfg, &Taps::new(), None, &mut |_, _| {}).unwrap();
    for (g, p) in gens.iter().zip(prompts) {
        assert_eq!(
            g.tokens,
            ids_of(&p["greedy"]),
            "{}: greedy tokens differ from HF",
            p["name"]
        );
    }

    // z at the last position of the two sycophancy prompts, and the head patch.
    let zr = read_refs(&fixture("smollm2").join("z_last.safetensors"));
    let names: Vec<&str> = prompts
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let dont = names.iter().position(|n| *n == "syc_dont").unwrap();
    let do_ = names.iter().position(|n| *n == "syc_do").unwrap();
    let pair = vec![all_ids[dont].clone(), all_ids[do_].clone()];
    let out = model
        .forward(
            &pair,
            &Taps::new().capture_all_z(model.n_layers(), Positions::Last),
        )
        .unwrap();
    let (l_n, h_n, d) = (model.n_layers(), model.n_heads(), model.head_dim());
    let mut ours = vec![];
    for s in 0..2 {
        for l in 0..l_n {
            ours.extend_from_slice(out.z(l).unwrap().last_of(s).unwrap());
        }
    }
    let err = rel_err(&ours, &zr["z_last"].data);
    assert!(err <= 1e-3, "z_last relative error {err:e}");
    let (layer, head) = (
        exp["patch"]["layer"].as_u64().unwrap() as usize,
        exp["patch"]["head"].as_u64().unwrap() as usize,
    );
    let src = out.z(layer).unwrap().last_of(1).unwrap()[head * d..(head + 1) * d].to_vec();
    let pos = pair[0].len() - 1;
    let taps = Taps::new().patch_z(HeadId::new(layer, head), d, 0, pos, src);
    let patched = model.forward(&pair[..1], &taps).unwrap();
    let err = rel_err(patched.logits.row_at(0), &zr["logits_patched"].data);
    assert!(err <= 1e-3, "patched logits relative error {err:e}");
    // The patch must actually move the logits (else the test could not fail).
    assert!(
        rel_err(
            patched.logits.row_at(0),
            &last.data[dont * v..(dont + 1) * v]
        ) > 1e-5
    );
    assert_eq!(h_n * d, model.cfg.q_dim());
}

#[test]
fn smollm2_fast_path_patching_equals_the_literal_oracle() {
    use pinpoint::diagnose::metric::{Metric, MetricKind};
    use pinpoint::diagnose::pairs::{pair_for_question, tokenize_pairs, DEFAULT_SYSTEM};
    use pinpoint::diagnose::path_patching::{
        clean_runs, path_patching_fast, path_patching_literal, Node,
    };
    let dir = default_model();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Model::load_cpu(&dir).unwrap();
    let qs = two_mc_questions();
    let prompt_pairs: Vec<_> = qs
        .iter()
        .map(|q| pair_for_question(q, Some(DEFAULT_SYSTEM)))
        .collect();
    let pairs = tokenize_pairs(&tok, &prompt_pairs).unwrap();
    // The default pairs differ in length ("don't" is two tokens, "do" one).
    assert!(pairs
        .iter()
        .all(|p| p.reference.len() == p.counterfactual.len() + 1));
    for kind in [MetricKind::LogitDiff, MetricKind::Ratio] {
        let metric = Metric::from_words(kind, &tok, "Apologies", "Yes").unwrap();
        let runs = clean_runs(&model, &pairs, &metric, 8, None).unwrap();
        let fast = path_patching_fast(&model, &runs, &metric, false, 8, None).unwrap();
        // The oracle on a spread of heads (one full patched forward each).
        let heads: Vec<HeadId> = [
            (0, 0),
            (3, 4),
            (14, 2),
            (17, 7),
            (18, 3),
            (22, 5),
            (29, 0),
            (29, 8),
        ]
        .iter()
        .map(|&(l, h)| HeadId::new(l, h))
        .collect();
        let nodes: Vec<Node> = heads.iter().map(|&head| Node { head, pos: None }).collect();
        let oracle =
            path_patching_literal(&model, &pairs, &runs, &nodes, &metric, false, 8, None).unwrap();
        let h_n = model.n_heads();
        for (i, head) in heads.iter().enumerate() {
            for (p, &o) in oracle[i].iter().enumerate() {
                let f = fast.per_pair[head.layer * h_n + head.head][p];
                let tol = 1e-4 * o.abs().max(1.0)
                    + if kind == MetricKind::Ratio {
                        2e-3 * o.abs()
                    } else {
                        0.0
                    };
                assert!(
                    (f - o).abs() <= tol,
                    "{kind:?} {head} pair {p}: fast {f} vs oracle {o}"
                );
            }
        }
        let moved = oracle.iter().flatten().filter(|x| x.abs() > 1e-4).count();
        assert!(
            moved >= heads.len(),
            "{kind:?}: too few heads moved the metric ({moved})"
        );
    }
}

#[test]
fn smollm2_diagnosis_bad_inputs_are_clear_errors() {
    use pinpoint::diagnose::metric::{Metric, MetricKind};
    use pinpoint::diagnose::pairs::{read_pairs_jsonl, require_equal_lengths, tokenize_pairs};
    let tok = Tokenizer::from_dir(&default_model()).unwrap();
    let e = Metric::from_words(MetricKind::Ratio, &tok, "", "Yes").unwrap_err();
    assert!(format!("{e:#}").contains("label word"), "{e:#}");
    assert!(tokenize_pairs(&tok, &[]).is_err());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("pairs.jsonl");
    std::fs::write(&p, "").unwrap();
    assert!(format!("{:#}", read_pairs_jsonl(&p).unwrap_err()).contains("no pairs"));
    std::fs::write(
        &p,
        "{\"reference\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let e = format!("{:#}", read_pairs_jsonl(&p).unwrap_err());
    assert!(e.contains("pairs.jsonl:1"), "{e}");
    let line = |c: &str| {
        format!("{{\"reference\": [{{\"role\": \"user\", \"content\": \"I don't know {c}\"}}], \"counterfactual\": [{{\"role\": \"user\", \"content\": \"I do know {c}\"}}]}}\n")
    };
    std::fs::write(&p, line("x") + &line("y")).unwrap();
    let pairs = tokenize_pairs(&tok, &read_pairs_jsonl(&p).unwrap()).unwrap();
    let e = require_equal_lengths(&pairs, "this mode")
        .unwrap_err()
        .to_string();
    assert!(e.contains("#0") && e.contains("#1"), "{e}");
}
