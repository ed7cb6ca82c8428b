//! The CPU forward against HF transformers on tiny random models (fixtures written by
//! scripts/make_fixtures.py): logits, z of every head, attention patterns, residuals,
//! patching and ablation, variable lengths, KV-cache steps, save/load round trip.

mod common;
use common::*;
use pinpoint::heads::{HeadId, HookPoint, Positions, Taps};
use pinpoint::model::checkpoint::{load_model_dir, save_model_dir};
use pinpoint::Model;

const TOL: f32 = 1e-4;
const MODELS: &[&str] = common::TINY_MODELS;

/// Models whose forward of a sequence in pieces (KV cache, shared prefixes) equals the
/// forward of the whole: all but dynamic NTK RoPE, whose frequencies depend on the length a
/// sequence has when its keys are computed (in HF as here), so keys cached at a shorter
/// length were rotated with other frequencies.
fn length_free(name: &str) -> bool {
    name != "tiny-dynamic"
}

fn load(
    name: &str,
) -> (
    Model<pinpoint::backend::cpu::CpuBackend>,
    std::collections::HashMap<String, Ref>,
) {
    let dir = fixture(name);
    let m = Model::load_cpu(&dir).expect("load fixture model");
    let refs = read_refs(&dir.join("expected.safetensors"));
    (m, refs)
}

fn expected_json(name: &str) -> serde_json::Value {
    let p = fixture(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn logits_z_patterns_and_residuals_match_hf() {
    for name in MODELS {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        let (layers, heads, d) = (m.n_layers(), m.n_heads(), m.head_dim());
        let mut taps = Taps::new()
            .with_logits(Positions::All)
            .capture_all_z(layers, Positions::All);
        for l in 0..layers {
            taps = taps.capture(HookPoint::ResidPre(l), Positions::All);
            for h in 0..heads {
                taps = taps.pattern(HeadId::new(l, h));
            }
        }
        let out = m.forward(&ids, &taps).unwrap();
        assert_close(
            &format!("{name} logits"),
            &out.logits.data.data,
            &r["logits"].data,
            TOL,
        );
        for l in 0..layers {
            // z: [B, T, H, D] == our packed rows [B*T, H*D].
            assert_close(
                &format!("{name} z.{l}"),
                &out.z(l).unwrap().data.data,
                &r[&format!("z.{l}")].data,
                TOL,
            );
            let resid = &out.captures[&HookPoint::ResidPre(l)].data.data;
            assert_close(
                &format!("{name} resid.{l}"),
                resid,
                &r[&format!("resid.{l}")].data,
                TOL,
            );
            // attn: [B, H, T, T].
            let t = ids[0].len();
            let refp = &r[&format!("attn.{l}")].data;
            for (b, _) in ids.iter().enumerate() {
                for h in 0..heads {
                    let ours = &out.patterns[&(HeadId::new(l, h), b)].data;
                    let theirs = &refp[(b * heads + h) * t * t..][..t * t];
                    assert_close(&format!("{name} attn.{l} b{b} h{h}"), ours, theirs, TOL);
                }
            }
        }
        assert_eq!(out.z(0).unwrap().width(), heads * d);
    }
}

#[test]
fn patching_with_own_values_is_identity() {
    for name in MODELS {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        let d = m.head_dim();
        let base = m
            .forward(
                &ids,
                &Taps::new()
                    .with_logits(Positions::All)
                    .capture_all_z(m.n_layers(), Positions::All),
            )
            .unwrap();
        // Every head's z at every position patched with `f` of its own value.
        let patch_all = |f: &dyn Fn(f32) -> f32| {
            let mut taps = Taps::new().with_logits(Positions::All);
            for l in 0..m.n_layers() {
                let z = base.z(l).unwrap();
                for (i, &(seq, pos)) in z.index.iter().enumerate() {
                    for h in 0..m.n_heads() {
                        let v = z.row_at(i)[h * d..(h + 1) * d].iter().map(|&x| f(x));
                        taps = taps.patch_z(HeadId::new(l, h), d, seq, pos, v.collect());
                    }
                }
            }
            m.forward(&ids, &taps).unwrap().logits.data.data
        };
        assert_eq!(
            patch_all(&|x| x),
            base.logits.data.data,
            "{name}: self-patch changed logits"
        );
        // The same patches with other values do change them: the identity above is not
        // patching ignored.
        assert_ne!(
            patch_all(&|x| 2.0 * x),
            base.logits.data.data,
            "{name}: patching z with other values left the logits as they were"
        );
    }
}

#[test]
fn patched_and_ablated_logits_match_hf_hooks() {
    for name in MODELS {
        let (m, r) = load(name);
        let spec = expected_json(name);
        let ids = id_rows(&r["input_ids"]);
        let d = m.head_dim();
        let t = ids[0].len();
        let z = m
            .forward(
                &ids,
                &Taps::new().capture_all_z(m.n_layers(), Positions::All),
            )
            .unwrap();
        let z_of = |l: usize, h: usize, seq: usize, pos: usize| {
            z.z(l).unwrap().row(seq, pos).unwrap()[h * d..(h + 1) * d].to_vec()
        };

        // patched_logits: item 0, layer 1 head 2 at the last position <- item 1.
        let (l, h, pos) = (1, 2, t - 1);
        let taps = Taps::new().with_logits(Positions::All).patch_z(
            HeadId::new(l, h),
            d,
            0,
            pos,
            z_of(l, h, 1, pos),
        );
        let out = m.forward(&ids[..1], &taps).unwrap();
        assert_close(
            &format!("{name} patched_logits"),
            &out.logits.data.data,
            &r["patched_logits"].data,
            TOL,
        );

        // patched_mid_logits: layer 0 head 1 at positions 3..=6 <- item 1.
        let mut taps = Taps::new().with_logits(Positions::All);
        for pos in 3..=6 {
            taps = taps.patch_z(HeadId::new(0, 1), d, 0, pos, z_of(0, 1, 1, pos));
        }
        let out = m.forward(&ids[..1], &taps).unwrap();
        assert_close(
            &format!("{name} patched_mid_logits"),
            &out.logits.data.data,
            &r["patched_mid_logits"].data,
            TOL,
        );

        // ablated_logits: (2,0) and (0,3) replaced by their mean over all positions and items.
        let mut taps = Taps::new().with_logits(Positions::All);
        for (l, h) in [(2usize, 0usize), (0, 3)] {
            let cap = z.z(l).unwrap();
            let mut mean = vec![0.0f32; d];
            for i in 0..cap.index.len() {
                for (m_, v) in mean.iter_mut().zip(&cap.row_at(i)[h * d..(h + 1) * d]) {
                    *m_ += v / cap.index.len() as f32;
                }
            }
            taps = taps.ablate_z(HeadId::new(l, h), d, mean);
        }
        let out = m.forward(&ids, &taps).unwrap();
        assert_close(
            &format!("{name} ablated_logits"),
            &out.logits.data.data,
            &r["ablated_logits"].data,
            TOL,
        );
        assert!(spec.get("patch").is_some() || spec.get("patches").is_some() || spec.is_object());
    }
}

#[test]
fn sequences_of_different_lengths_in_one_batch() {
    for name in MODELS {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        let short = id_rows(&r["short_ids"]).remove(0);
        let out = m
            .forward(
                &[ids[0].clone(), short.clone()],
                &Taps::new().with_logits(Positions::All),
            )
            .unwrap();
        let t = ids[0].len();
        let v = m.cfg.vocab_size;
        assert_close(
            &format!("{name} long row"),
            &out.logits.data.data[..t * v],
            &r["logits"].data[..t * v],
            TOL,
        );
        assert_close(
            &format!("{name} short_logits"),
            &out.logits.data.data[t * v..],
            &r["short_logits"].data,
            TOL,
        );
    }
}

#[test]
fn kv_cache_steps_equal_the_full_forward() {
    for name in MODELS.iter().filter(|n| length_free(n)) {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        let t = ids[0].len();
        let v = m.cfg.vocab_size;
        let mut cache = m.new_cache(2, t).unwrap();
        // Prefill unequal prefixes, then feed the rest one token at a time.
        let (p0, p1) = (4, 7);
        let taps = Taps::new().with_logits(Positions::All);
        let first = m
            .forward_cached(&[(0, &ids[0][..p0]), (1, &ids[1][..p1])], &mut cache, &taps)
            .unwrap();
        let mut got: Vec<Vec<f32>> = vec![
            first.logits.data.data[..p0 * v].to_vec(),
            first.logits.data.data[p0 * v..].to_vec(),
        ];
        for step in 0..t {
            let mut inputs: Vec<(usize, &[u32])> = vec![];
            for (s, p) in [(0usize, p0), (1, p1)] {
                if p + step < t {
                    inputs.push((s, &ids[s][p + step..p + step + 1]));
                }
            }
            if inputs.is_empty() {
                break;
            }
            let out = m.forward_cached(&inputs, &mut cache, &taps).unwrap();
            for (i, &(s, _)) in out.logits.index.iter().enumerate() {
                got[s].extend_from_slice(out.logits.row_at(i));
            }
        }
        for (s, got_s) in got.iter().enumerate() {
            assert_close(
                &format!("{name} cached seq {s}"),
                got_s,
                &r["logits"].data[s * t * v..(s + 1) * t * v],
                TOL,
            );
        }
        // Past capacity is an error, not a panic.
        assert!(m
            .forward_cached(&[(0, &ids[0][..1])], &mut cache, &taps)
            .is_err());
    }
}

#[test]
fn saved_model_round_trips_bit_for_bit() {
    for name in MODELS {
        let dir = fixture(name);
        let (cfg, w, dtype) = load_model_dir(&dir).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("saved");
        save_model_dir(&out, &cfg, &w, dtype, Some(&dir)).unwrap();
        let (cfg2, w2, dtype2) = load_model_dir(&out).unwrap();
        assert_eq!(dtype, dtype2);
        assert_eq!(cfg.num_hidden_layers, cfg2.num_hidden_layers);
        assert_eq!(cfg.sliding_window, cfg2.sliding_window);
        assert_eq!(
            cfg.rope, cfg2.rope,
            "{name}: the RoPE variant survives saving"
        );
        assert_eq!(cfg.qkv_bias, cfg2.qkv_bias);
        for ((n1, a), (n2, b)) in w.named().into_iter().zip(w2.named()) {
            assert_eq!(n1, n2);
            assert!(
                a.data
                    .iter()
                    .zip(&b.data)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {n1} changed"
            );
        }
    }
}

#[test]
fn continuations_of_a_shared_prefix_equal_full_forwards() {
    for name in MODELS.iter().filter(|n| length_free(n)) {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        let t = ids[0].len();
        let v = m.cfg.vocab_size;
        // Cache holds item 0's first 7 tokens and item 1's first 5.
        let mut cache = m.new_cache(2, t).unwrap();
        m.forward_cached(
            &[(0, &ids[0][..7]), (1, &ids[1][..5])],
            &mut cache,
            &Taps::new(),
        )
        .unwrap();
        // Three continuations; two share slot 0, with different tails.
        let tail_b: Vec<u32> = ids[1][7..].to_vec();
        let inputs: Vec<(usize, &[u32])> = vec![(0, &ids[0][7..]), (1, &ids[1][5..]), (0, &tail_b)];
        let out = m
            .forward_on_prefix(
                &inputs,
                &cache,
                &Taps::new().with_logits(Positions::All),
                None,
            )
            .unwrap();
        assert_eq!(cache.lens, vec![7, 5], "the cache must not change");
        let full = m
            .forward(
                &[ids[0].clone(), ids[1].clone()],
                &Taps::new().with_logits(Positions::All),
            )
            .unwrap();
        let mixed: Vec<u32> = ids[0][..7].iter().chain(&tail_b).copied().collect();
        let mixed_full = m
            .forward(&[mixed], &Taps::new().with_logits(Positions::All))
            .unwrap();
        let rows = |o: &pinpoint::heads::ForwardOutput, seq: usize| -> Vec<f32> {
            o.logits
                .index
                .iter()
                .enumerate()
                .filter(|(_, &(s, _))| s == seq)
                .flat_map(|(i, _)| o.logits.row_at(i).to_vec())
                .collect()
        };
        assert_close(
            &format!("{name} continuation 0"),
            &rows(&out, 0),
            &full.logits.data.data[7 * v..t * v],
            TOL,
        );
        assert_close(
            &format!("{name} continuation 1"),
            &rows(&out, 1),
            &full.logits.data.data[(t + 5) * v..2 * t * v],
            TOL,
        );
        assert_close(
            &format!("{name} continuation 2"),
            &rows(&out, 2),
            &mixed_full.logits.data.data[7 * v..],
            TOL,
        );
        // Starting at layer 2 from the captured residual gives the same logits.
        let cap = m
            .forward_on_prefix(
                &inputs,
                &cache,
                &Taps::new().capture(HookPoint::ResidPre(2), Positions::All),
                None,
            )
            .unwrap();
        let resid = &cap.captures[&HookPoint::ResidPre(2)].data;
        let from = m
            .forward_on_prefix(
                &inputs,
                &cache,
                &Taps::new().with_logits(Positions::All),
                Some((2, resid)),
            )
            .unwrap();
        assert_eq!(
            from.logits.data.data, out.logits.data.data,
            "{name}: start at layer 2"
        );
    }
}

#[test]
fn generation_with_taps_equals_a_loop_of_full_forwards() {
    use pinpoint::generate::{argmax, generate, GenConfig};
    for name in MODELS.iter().filter(|n| length_free(n)) {
        let (m, r) = load(name);
        let ids = id_rows(&r["input_ids"]);
        // Generation ends at the context (max_position_embeddings): prompts leave room for
        // the 6 new tokens (tiny-linear's context is 8).
        let room = m.cfg.max_position_embeddings - 6;
        let prompts = vec![
            ids[0][..5.min(room)].to_vec(),
            ids[1][..8.min(room)].to_vec(),
        ];
        let d = m.head_dim();
        // Knockout during generation: a head mean-ablated at every position.
        let taps = Taps::new().ablate_z(HeadId::new(1, 1), d, vec![0.25; d]);
        let cfg = GenConfig {
            max_new_tokens: 6,
            ..Default::default()
        };
        let gens = generate(&m, &prompts, &cfg, &taps, None, &mut |_, _| {}).unwrap();
        let plain = generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {}).unwrap();
        for (p, g) in prompts.iter().zip(&gens) {
            let mut seq = p.clone();
            for _ in 0..6 {
                let out = m.forward(std::slice::from_ref(&seq), &taps).unwrap();
                seq.push(argmax(out.logits.row_at(0)));
            }
            assert_eq!(
                g.tokens,
                seq[p.len()..],
                "{name}: cached generation differs from full forwards"
            );
        }
        assert_ne!(
            gens.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>(),
            plain.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>(),
            "{name}: the ablation should change some tokens"
        );
        // Seeded sampling is reproducible and stops at an EOS id.
        let cfg = GenConfig {
            max_new_tokens: 8,
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
            ..Default::default()
        };
        let a = generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {}).unwrap();
        let b = generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {}).unwrap();
        assert_eq!(a, b);
        let eos = a[0].tokens[2];
        let cfg = GenConfig {
            eos_ids: vec![eos],
            ..cfg
        };
        let c = generate(&m, &prompts, &cfg, &Taps::new(), None, &mut |_, _| {}).unwrap();
        assert_eq!(
            c[0].tokens,
            a[0].tokens[..=a[0].tokens.iter().position(|&t| t == eos).unwrap()]
        );
        assert_eq!(c[0].stop, pinpoint::generate::StopReason::Eos);
    }
}

#[test]
fn hook_points_have_transformer_lens_names() {
    use pinpoint::HookPoint;
    assert_eq!(HookPoint::Z(3).tl_name(), "blocks.3.attn.hook_z");
    assert_eq!(HookPoint::ResidPre(0).tl_name(), "blocks.0.hook_resid_pre");
    assert_eq!(HookPoint::AttnOut(2).tl_name(), "blocks.2.hook_attn_out");
    assert_eq!(HookPoint::MlpOut(1).tl_name(), "blocks.1.hook_mlp_out");
    assert_eq!(
        HookPoint::AttnIn(4).tl_name(),
        "blocks.4.ln1.hook_normalized"
    );
}

/// Dynamic NTK: each sequence takes the table of its own length. A 6-token sequence (within
/// max_position_embeddings 6) uses plain frequencies and matches HF's 6-token run, alone or in
/// one call with the 11-token sequence (which matches HF's 11-token run), so results do not
/// depend on batching.
#[test]
fn dynamic_rope_gives_each_sequence_the_table_of_its_length() {
    let (m, r) = load("tiny-dynamic");
    let ids = id_rows(&r["input_ids"]);
    let short = id_rows(&r["short_ids"]).remove(0);
    let taps = Taps::new().with_logits(Positions::All);
    let alone = m.forward(std::slice::from_ref(&short), &taps).unwrap();
    assert_close(
        "tiny-dynamic short alone",
        &alone.logits.data.data,
        &r["short_logits"].data,
        TOL,
    );
    let both = m.forward(&[ids[0].clone(), short.clone()], &taps).unwrap();
    let (t, v) = (ids[0].len(), m.cfg.vocab_size);
    assert_close(
        "tiny-dynamic long row",
        &both.logits.data.data[..t * v],
        &r["logits"].data[..t * v],
        TOL,
    );
    assert_close(
        "tiny-dynamic short row beside the long one",
        &both.logits.data.data[t * v..],
        &r["short_logits"].data,
        TOL,
    );
    // The plan of that call has two tables, and the long one is not the plain one.
    let spans = [(0, t), (t, short.len())].map(|(q_start, q_len)| pinpoint::backend::SeqSpan {
        q_start,
        q_len,
        kv_start: q_start,
        pos0: 0,
        kv_new: None,
    });
    let plan = m.cfg.rope.plan(&spans);
    assert_eq!(plan.parts.len(), 2);
    assert_ne!(plan.parts[0].1, plan.parts[1].1);
}
