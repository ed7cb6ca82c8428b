//! Tuning invariants: frozen weights keep their bits, tuned slices move, optimizer state is
//! the size of the tuned slices, resume is bit-identical to an uninterrupted run, a
//! non-finite loss stops with a clear error and leaves a loadable checkpoint, LoRA merges
//! exactly, and bad inputs give clear errors.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::{Region, TrainBackend};
use pinpoint::heads::{HeadId, Positions, Taps};
use pinpoint::model::checkpoint::load_model_dir;
use pinpoint::model::{HostTensor, ModelWeights};
use pinpoint::train::{self, TrainSeq};
use pinpoint::tune::data::{build_example, parse_jsonl};
use pinpoint::tune::lora::{self, LoraConfig};
use pinpoint::tune::mask::{param, HeadProjs, LayerParam, Mask, ParamId};
use pinpoint::tune::{parse_heads_json, parse_heads_list, AdamWConfig, Trainer, TuneConfig};
use pinpoint::Model;
use std::path::Path;

fn model(name: &str) -> Model<CpuBackend> {
    Model::load_cpu(&fixture(name)).expect("load fixture model")
}

/// Six examples cut from the fixture's token rows, with reply targets after a prompt.
fn data(name: &str) -> Vec<TrainSeq> {
    let r = read_refs(&fixture(name).join("expected.safetensors"));
    let ids = id_rows(&r["input_ids"]);
    (0..6)
        .map(|i| {
            let full = &ids[i % 2][..7 + i % 4];
            build_example(&full[..3 + i % 3], full, i + 1, None).unwrap()
        })
        .collect()
}

fn cfg(steps: usize) -> TuneConfig {
    TuneConfig {
        optim: AdamWConfig {
            lr: 1e-2,
            lr_end: 1e-4,
            warmup_steps: 1,
            ..Default::default()
        },
        steps,
        batch: 3,
        micro_batch: 2,
        seed: 5,
        checkpoint_every: 0,
        keep_checkpoints: 2,
        progress: false,
        ..Default::default()
    }
}

fn bits_equal(a: &HostTensor, b: &HostTensor) -> bool {
    a.shape == b.shape
        && a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

fn all_params(w: &ModelWeights<HostTensor>) -> Vec<ParamId> {
    let mut ps = vec![ParamId::Embed, ParamId::FinalNorm];
    for l in 0..w.layers.len() {
        ps.extend(
            w.layers[l]
                .params()
                .into_iter()
                .map(|p| ParamId::Layer(l, p)),
        );
    }
    if w.lm_head.is_some() {
        ps.push(ParamId::LmHead);
    }
    ps
}

/// Per element: is it inside one of `mask`'s slices of `p`?
fn tuned_elements(mask: &Mask, p: ParamId, shape: &[usize]) -> Vec<bool> {
    let (rows, cols) = if shape.len() == 2 {
        (shape[0], shape[1])
    } else {
        (1, shape[0])
    };
    let mut t = vec![false; rows * cols];
    for (_, reg) in mask.slices_of(p) {
        for r in 0..rows {
            for c in 0..cols {
                t[r * cols + c] |= match reg {
                    Region::Full => true,
                    Region::Rows { start, len } => (start..start + len).contains(&r),
                    Region::Cols { start, len } => (start..start + len).contains(&c),
                };
            }
        }
    }
    t
}

#[test]
fn head_mask_freezes_everything_else_bit_for_bit() {
    let heads = [HeadId::new(0, 1), HeadId::new(2, 3), HeadId::new(2, 2)];
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen3"] {
        for authors_decay in [false, true] {
            let m = model(name);
            let before = m.host_weights().unwrap();
            let projs = HeadProjs::default_for(&m.cfg);
            let mask = Mask::heads(&m.cfg, &heads, projs).unwrap();
            let (d, hd) = (m.cfg.hidden_size, m.cfg.head_dim);
            let per_head = if m.cfg.is_gqa() {
                2 * hd * d
            } else {
                4 * hd * d
            };
            assert_eq!(
                mask.numel(&m.cfg),
                heads.len() * per_head,
                "{name}: tuned size"
            );
            let tmp = tempfile::tempdir().unwrap();
            let c = TuneConfig {
                authors_decay,
                ..cfg(3)
            };
            let mut t =
                Trainer::new(m, mask.clone(), heads.to_vec(), data(name), c, tmp.path()).unwrap();
            assert_eq!(
                t.host_states()
                    .unwrap()
                    .iter()
                    .map(|s| s.master.len() + s.m.len() + s.v.len())
                    .sum::<usize>(),
                3 * mask.numel(&t.model.cfg),
                "{name}: Adam state size"
            );
            t.run().unwrap();
            let after = t.model.host_weights().unwrap();
            let partial = mask.partial_params();
            for p in all_params(&before) {
                let (a, b) = (param(&before, p).unwrap(), param(&after, p).unwrap());
                let tuned = tuned_elements(&mask, p, &a.shape);
                let decays = authors_decay && partial.contains(&p);
                for (i, ((x, y), t)) in a.data.iter().zip(&b.data).zip(&tuned).enumerate() {
                    if *t || decays {
                        assert_ne!(
                            x.to_bits(),
                            y.to_bits(),
                            "{name}: {p} element {i} did not move"
                        );
                    } else {
                        assert_eq!(
                            x.to_bits(),
                            y.to_bits(),
                            "{name}: frozen {p} element {i} changed"
                        );
                    }
                }
            }
            // The saved model holds the trained weights (in the model's dtype).
            let (_, saved, _) = load_model_dir(tmp.path()).unwrap();
            let q = ParamId::Layer(2, LayerParam::Q);
            let (sq, aq) = (param(&saved, q).unwrap(), param(&after, q).unwrap());
            let tol = if name == "tiny-mistral" { 1e-2 } else { 0.0 };
            assert_close(&format!("{name} saved q"), &sq.data, &aq.data, tol);
        }
    }
}

#[test]
fn gqa_kv_groups_train_only_when_asked() {
    let m = model("tiny-mistral");
    let c = &m.cfg;
    let def = Mask::heads(c, &[HeadId::new(1, 5)], HeadProjs::default_for(c)).unwrap();
    assert!(
        !def.trains(ParamId::Layer(1, LayerParam::K))
            && !def.trains(ParamId::Layer(1, LayerParam::V))
    );
    let all = HeadProjs::parse("q,k,v,o").unwrap();
    // Heads 4 and 5 share kv group 1 (8 heads, 2 groups): one k slice, rows [8, 16).
    let mk = Mask::heads(c, &[HeadId::new(1, 5), HeadId::new(1, 4)], all).unwrap();
    let ks: Vec<Region> = mk
        .slices_of(ParamId::Layer(1, LayerParam::K))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ks, vec![Region::Rows { start: 8, len: 8 }]);
    let os: Vec<Region> = mk
        .slices_of(ParamId::Layer(1, LayerParam::O))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        os,
        vec![
            Region::Cols { start: 32, len: 8 },
            Region::Cols { start: 40, len: 8 }
        ]
    );
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    for authors_decay in [false, true] {
        resume_case(authors_decay);
    }
}

fn resume_case(authors_decay: bool) {
    let name = "tiny-mistral"; // bf16 on disk: resume must not round the tuned slices
    let heads = vec![HeadId::new(1, 2), HeadId::new(0, 7)];
    let mk = |m: &Model<CpuBackend>| {
        Mask::heads(&m.cfg, &heads, HeadProjs::parse("q,k,v,o").unwrap()).unwrap()
    };
    let c = TuneConfig {
        checkpoint_every: 2,
        authors_decay,
        ..cfg(4)
    };

    let dir_a = tempfile::tempdir().unwrap();
    let m = model(name);
    let mask = mk(&m);
    let mut a = Trainer::new(m, mask, heads.clone(), data(name), c.clone(), dir_a.path()).unwrap();
    a.run().unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let m = model(name);
    let mask = mk(&m);
    let mut b1 = Trainer::new(m, mask, heads.clone(), data(name), c.clone(), dir_b.path()).unwrap();
    b1.run_until(2).unwrap();
    drop(b1);
    let m = model(name);
    let mask = mk(&m);
    let mut b2 = Trainer::new(m, mask, heads.clone(), data(name), c.clone(), dir_b.path()).unwrap();
    assert!(b2.resume().unwrap());
    assert_eq!(b2.step_count(), 2);
    b2.run().unwrap();

    let (wa, wb) = (
        a.model.host_weights().unwrap(),
        b2.model.host_weights().unwrap(),
    );
    for ((n, x), (_, y)) in wa.named().into_iter().zip(wb.named()) {
        assert!(
            bits_equal(x, y),
            "{n} differs between the straight and the resumed run"
        );
    }
    for (sa, sb) in a
        .host_states()
        .unwrap()
        .iter()
        .zip(&b2.host_states().unwrap())
    {
        assert_eq!(sa, sb, "optimizer state differs");
    }
    assert_eq!(a.history.len(), 4);
    // Bit patterns, not values: the restored history must be the uninterrupted one exactly.
    let bits = |t: &Trainer<CpuBackend>| -> Vec<(u64, u32, u64)> {
        t.history
            .iter()
            .map(|h| (h.loss.to_bits(), h.lr.to_bits(), h.grad_norm.to_bits()))
            .collect()
    };
    assert_eq!(bits(&a), bits(&b2));
    // A resume with other heads is refused.
    let m = model(name);
    let other = Mask::heads(&m.cfg, &[HeadId::new(2, 2)], HeadProjs::default_for(&m.cfg)).unwrap();
    let mut c2 = Trainer::new(m, other, vec![], data(name), c, dir_b.path()).unwrap();
    let e = format!("{:#}", c2.resume().unwrap_err());
    assert!(e.contains("other slices"), "{e}");
}

#[test]
fn non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let name = "tiny-llama";
    let m = model(name);
    let heads = vec![HeadId::new(1, 1)];
    let mask = Mask::heads(&m.cfg, &heads, HeadProjs::default_for(&m.cfg)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let c = TuneConfig {
        checkpoint_every: 1,
        ..cfg(5)
    };
    let mut t = Trainer::new(m, mask, heads, data(name), c, tmp.path()).unwrap();
    t.run_until(2).unwrap();
    // Plant an overflow: a huge final-norm weight sends the logits to inf.
    t.model
        .weights
        .final_norm
        .data
        .iter_mut()
        .for_each(|x| *x = f32::MAX);
    let err = format!("{:#}", t.run().unwrap_err());
    assert!(
        err.contains("step 3") && err.contains("not finite"),
        "{err}"
    );
    assert!(
        err.contains("step-000002"),
        "the error names the last good checkpoint: {err}"
    );
    let last = Trainer::<CpuBackend>::latest_checkpoint(tmp.path())
        .unwrap()
        .unwrap();
    assert!(last.ends_with("step-000002"));
    let (_, w, _) = load_model_dir(&last).unwrap();
    assert!(w.final_norm.data.iter().all(|x| x.is_finite() && *x < 1e6));
    // An lr of inf is refused up front.
    let m = model(name);
    let mask = Mask::heads(&m.cfg, &[HeadId::new(0, 0)], HeadProjs::default_for(&m.cfg)).unwrap();
    let bad = TuneConfig {
        optim: AdamWConfig {
            lr: f32::INFINITY,
            ..Default::default()
        },
        ..cfg(2)
    };
    assert!(Trainer::new(m, mask, vec![], data(name), bad, tmp.path()).is_err());
}

#[test]
fn lora_merge_equals_the_unmerged_forward_and_the_base_stays_frozen() {
    for name in ["tiny-llama", "tiny-mistral", "tiny-qwen3"] {
        let m = model(name);
        let before = m.host_weights().unwrap();
        let lc = LoraConfig {
            rank: 4,
            alpha: 8.0,
            projs: vec![
                LayerParam::Q,
                LayerParam::V,
                LayerParam::O,
                LayerParam::Down,
            ],
            layers: Some(vec![0, 2]),
            seed: 1,
        };
        let mut ads = lora::init(&m, &lc).unwrap();
        // B starts at zero; give it values so the merge is not trivial.
        for (i, a) in ads.iter_mut().enumerate() {
            a.b.data
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x = (((i * 31 + j * 7) % 13) as f32 - 6.0) * 0.02);
        }
        let r = read_refs(&fixture(name).join("expected.safetensors"));
        let ids = id_rows(&r["input_ids"]);
        let unmerged = train::logits_with(&m, &ads, &ids).unwrap();
        let merged = lora::merged(&m, &ads).unwrap();
        let mm = Model::from_host(m.cfg.clone(), &merged, CpuBackend).unwrap();
        let out = mm
            .forward(&ids, &Taps::new().with_logits(Positions::All))
            .unwrap();
        assert_close(
            &format!("{name} lora merged vs unmerged"),
            &out.logits.data.data,
            &unmerged.data,
            1e-4,
        );
        let plain = m
            .forward(&ids, &Taps::new().with_logits(Positions::All))
            .unwrap();
        assert!(
            max_abs_diff(&plain.logits.data.data, &unmerged.data) > 1e-3,
            "{name}: adapters had no effect"
        );

        // Train LoRA: base weights keep their bits; the saved model is the merge.
        let tmp = tempfile::tempdir().unwrap();
        let c = TuneConfig {
            lora: Some(lc.clone()),
            ..cfg(2)
        };
        let mut t = Trainer::new(m, Mask::none(), vec![], data(name), c, tmp.path()).unwrap();
        t.run().unwrap();
        let after = t.model.host_weights().unwrap();
        for ((n, x), (_, y)) in before.named().into_iter().zip(after.named()) {
            assert!(
                bits_equal(x, y),
                "{name}: base weight {n} changed under LoRA"
            );
        }
        assert!(
            t.adapters
                .iter()
                .any(|a| a.b.data.iter().any(|&x| x != 0.0)),
            "{name}: LoRA B did not move"
        );
        let fw = t.final_weights().unwrap();
        let want = lora::merged(&t.model, &t.adapters).unwrap();
        for ((n, x), (_, y)) in fw.named().into_iter().zip(want.named()) {
            assert!(bits_equal(x, y), "{name}: {n}");
        }
        // Adapter gradients against finite differences of the loss in one coordinate.
        let seqs = data(name);
        let mut g = train::Grads::zeros(&t.model, &Mask::none(), &t.adapters).unwrap();
        let n: usize = seqs.iter().map(|s| s.n_targets()).sum();
        train::loss_and_grads(
            &t.model,
            &t.adapters,
            &Mask::none(),
            &seqs,
            1.0 / n as f32,
            &mut g,
        )
        .unwrap();
        for which in 0..2 {
            let (ga, gb) = &g.adapters[1];
            let gt = if which == 0 { ga } else { gb };
            let i = (0..gt.data.len())
                .max_by(|&a, &b| gt.data[a].abs().total_cmp(&gt.data[b].abs()))
                .unwrap();
            let mut f = |delta: f32| {
                let ad = &mut t.adapters[1];
                let x = if which == 0 { &mut ad.a } else { &mut ad.b };
                x.data[i] += delta;
                let (l, n) = train::loss(&t.model, &t.adapters, &seqs).unwrap();
                let ad = &mut t.adapters[1];
                let x = if which == 0 { &mut ad.a } else { &mut ad.b };
                x.data[i] -= delta;
                l / n as f64
            };
            let num = (f(1e-2) - f(-1e-2)) / 2e-2;
            let ana = gt.data[i] as f64;
            assert!(
                (num - ana).abs() <= 2e-2 * ana.abs() + 1e-4,
                "{name} LoRA grad {which}: {ana} vs {num}"
            );
        }
    }
}

fn heads_json(layers: usize, heads: usize, n: usize) -> String {
    let hs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"layer": {}, "head": {}, "score": -{i}.5, "rank": {}}}"#,
                i % layers,
                i % heads,
                i + 1
            )
        })
        .collect();
    format!(
        r#"{{"model": {{"architecture": "LlamaForCausalLM", "num_hidden_layers": {layers}, "num_attention_heads": {heads}, "num_key_value_heads": {heads}, "head_dim": 16, "hidden_size": 64}}, "heads": [{}]}}"#,
        hs.join(", ")
    )
}

#[test]
fn bad_inputs_give_clear_errors() {
    let m = model("tiny-llama");
    let c = &m.cfg;
    // A good file: top 2 by rank.
    let good = heads_json(3, 4, 5);
    assert_eq!(
        parse_heads_json(&good, c, 2).unwrap(),
        vec![HeadId::new(0, 0), HeadId::new(1, 1)]
    );
    let e = parse_heads_json(&good, c, 6).unwrap_err().to_string();
    assert!(e.contains("--top-k 6") && e.contains("5 heads"), "{e}");
    let other = heads_json(32, 32, 5).replace("\"head_dim\": 16", "\"head_dim\": 128");
    let e = parse_heads_json(&other, c, 2).unwrap_err().to_string();
    assert!(
        e.contains("another model") && e.contains("num_hidden_layers 32"),
        "{e}"
    );
    let mis = Model::load_cpu(&fixture("tiny-mistral")).unwrap();
    assert!(parse_heads_json(&good, &mis.cfg, 1)
        .unwrap_err()
        .to_string()
        .contains("another model"));
    assert!(parse_heads_json("{\"heads\": []}", c, 1).is_err());
    // --heads-list.
    assert_eq!(
        parse_heads_list("L2H3, l0h1", c).unwrap(),
        vec![HeadId::new(2, 3), HeadId::new(0, 1)]
    );
    assert!(parse_heads_list("L9H0", c)
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
    assert!(parse_heads_list("2.3", c)
        .unwrap_err()
        .to_string()
        .contains("L3H5"));
    // TransformerLens hook names of a head, mixed with labels.
    assert_eq!(
        parse_heads_list(
            "blocks.2.attn.hook_z[:, :, 3], blocks.0.attn.hook_pattern[:, 1], L1H0",
            c
        )
        .unwrap(),
        vec![HeadId::new(2, 3), HeadId::new(0, 1), HeadId::new(1, 0)]
    );
    let e = parse_heads_list("blocks.2.attn.hook_q[:, :, 3]", c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--heads-list") && e.contains("hook_pattern"),
        "{e}"
    );
    // Data.
    assert!(parse_jsonl("\n\n", "train.jsonl")
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let e = parse_jsonl(
        r#"{"messages": [{"role": "user", "content": "Are you sure?"}]}"#,
        "train.jsonl",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train.jsonl:1") && e.contains("assistant"),
        "{e}"
    );
    // An empty data set or a model without a mask is refused by the trainer.
    let tmp = tempfile::tempdir().unwrap();
    let mask = Mask::heads(c, &[HeadId::new(0, 0)], HeadProjs::default_for(c)).unwrap();
    let e = Trainer::new(
        model("tiny-llama"),
        mask,
        vec![],
        vec![],
        cfg(1),
        tmp.path(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("no training examples"));
    let e = Trainer::new(
        model("tiny-llama"),
        Mask::none(),
        vec![],
        data("tiny-llama"),
        cfg(1),
        tmp.path(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("nothing to train"));
    // The benchmark entry point runs (no timing assertions).
    let secs = pinpoint::tune::trainer::BenchStep::new(3, 2, 9)
        .time(model("tiny-mistral"))
        .unwrap();
    assert!(secs >= 0.0);
    // Region helpers stay in bounds.
    assert!(CpuBackend
        .read_region(
            &HostTensor::zeros(vec![4, 4]),
            Region::Rows { start: 3, len: 2 }
        )
        .is_err());
    let _ = Path::new(".");
}
