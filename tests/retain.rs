//! Retain examples (`"loss": "retain"`): their target rows are scored by KL(original ‖
//! model) over the original model's top-k tokens plus one bucket for the rest. Checked
//! against finite differences of the loss itself, against the cross-entropy kernel for
//! ordinary rows, and end to end: zero loss and gradient before any update, a positive loss
//! once the weights move, and a teacher taken from the original weights on resume.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::TrainBackend;
use pinpoint::heads::HeadId;
use pinpoint::model::HostTensor;
use pinpoint::train::{self, xent_and_kl_in_place, SoftTarget, TrainSeq};
use pinpoint::tune::data::{build_example, parse_jsonl};
use pinpoint::tune::mask::{HeadProjs, Mask};
use pinpoint::tune::{AdamWConfig, Trainer, TuneConfig};
use pinpoint::Model;

/// Deterministic pseudo-random logits in [-3, 3).
fn logits(n: usize, vocab: usize, seed: u64) -> HostTensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data = (0..n * vocab)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 * 6.0 - 3.0) as f32
        })
        .collect();
    HostTensor::new(vec![n, vocab], data)
}

/// The loss of one row, in f64, written out from the definition (no shared code).
fn kl_bucketed(row: &[f64], p: &SoftTarget) -> f64 {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|l| (l - max).exp()).sum();
    let q = |i: usize| (row[i] - max).exp() / z;
    let q_top: f64 = p.ids.iter().map(|&i| q(i as usize)).sum();
    let p_top: f64 = p.probs.iter().map(|&x| x as f64).sum();
    let mut kl = 0.0;
    for (&i, &pi) in p.ids.iter().zip(&p.probs) {
        kl += pi as f64 * (pi as f64 / q(i as usize)).ln();
    }
    kl + (1.0 - p_top) * ((1.0 - p_top) / (1.0 - q_top)).ln()
}

#[test]
fn top_k_is_the_softmax_head_in_order() {
    let l = logits(1, 50, 3);
    let t = SoftTarget::top_k(&l.data, 5);
    let max = l.data.iter().copied().fold(f32::MIN, f32::max) as f64;
    let z: f64 = l.data.iter().map(|&x| (x as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by(|&a, &b| l.data[b].total_cmp(&l.data[a]));
    assert_eq!(
        t.ids,
        order[..5].iter().map(|&i| i as u32).collect::<Vec<_>>()
    );
    for (&i, &p) in t.ids.iter().zip(&t.probs) {
        let want = (l.data[i as usize] as f64 - max).exp() / z;
        assert!((p as f64 - want).abs() < 1e-7, "{p} vs {want}");
    }
}

#[test]
fn kl_rows_match_finite_differences_and_ce_rows_match_the_kernel() {
    let (n, vocab) = (4, 37);
    let x = logits(n, vocab, 11);
    // Teachers from other logits: rows 0 and 2 retain (k = 6 and k = 1), 1 is CE, 3 none.
    let other = logits(n, vocab, 12);
    let p0 = SoftTarget::top_k(&other.data[..vocab], 6);
    let p2 = SoftTarget::top_k(&other.data[2 * vocab..3 * vocab], 1);
    let targets = [Some(p0.ids[0]), Some(5), Some(p2.ids[0]), None];
    let soft = [Some(&p0), None, Some(&p2), None];
    let scale = 0.25;
    let mut d = x.clone();
    let loss = xent_and_kl_in_place(&mut d, &targets, &soft, scale).unwrap();

    // Loss: the definition, row by row.
    let row = |r: usize| -> Vec<f64> {
        x.data[r * vocab..(r + 1) * vocab]
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let ce = |r: &[f64], t: usize| {
        let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        r.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max - r[t]
    };
    let want = kl_bucketed(&row(0), &p0) + ce(&row(1), 5) + kl_bucketed(&row(2), &p2);
    assert!((loss - want).abs() < 1e-5, "loss {loss} vs {want}");

    // Gradient of the KL rows: central differences of the definition, per element.
    for (r, p) in [(0, &p0), (2, &p2)] {
        for j in 0..vocab {
            let h = 1e-4;
            let mut up = row(r);
            up[j] += h;
            let mut dn = row(r);
            dn[j] -= h;
            let fd = (kl_bucketed(&up, p) - kl_bucketed(&dn, p)) / (2.0 * h);
            let got = d.data[r * vocab + j] as f64 / scale as f64;
            assert!(
                (got - fd).abs() < 2e-5,
                "row {r} logit {j}: gradient {got} vs finite difference {fd}"
            );
        }
    }
    // The CE row equals the backend's cross-entropy kernel; the row without a target is 0.
    let (ce_loss, ce_d) = CpuBackend
        .xent_fwd_bwd(
            &HostTensor::new(vec![1, vocab], x.data[vocab..2 * vocab].to_vec()),
            &[Some(5)],
            scale,
        )
        .unwrap();
    assert!((ce_loss - ce(&row(1), 5)).abs() < 1e-5);
    for j in 0..vocab {
        let (a, b) = (d.data[vocab + j], ce_d.data[j]);
        assert!((a - b).abs() < 1e-7, "CE row logit {j}: {a} vs kernel {b}");
    }
    assert!(d.data[3 * vocab..].iter().all(|&v| v == 0.0));
}

fn tiny() -> Model<CpuBackend> {
    Model::load_cpu(&fixture("tiny-llama")).expect("load fixture model")
}

fn retain_data() -> Vec<TrainSeq> {
    let r = read_refs(&fixture("tiny-llama").join("expected.safetensors"));
    let ids = id_rows(&r["input_ids"]);
    (0..4)
        .map(|i| {
            let full = &ids[i % 2][..8 + i % 3];
            let mut s = build_example(&full[..3 + i % 2], full, i + 1, None).unwrap();
            s.retain = true;
            s
        })
        .collect()
}

fn tune_cfg(steps: usize) -> TuneConfig {
    TuneConfig {
        optim: AdamWConfig {
            lr: 5e-2,
            lr_end: 5e-2,
            ..Default::default()
        },
        steps,
        batch: 4,
        micro_batch: 2,
        checkpoint_every: 1,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn retain_loss_is_zero_before_any_update_and_grows_when_the_weights_move() {
    let heads = vec![HeadId::new(0, 1), HeadId::new(1, 0)];
    let m = tiny();
    let mask = Mask::heads(&m.cfg, &heads, HeadProjs::default_for(&m.cfg)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        m,
        mask.clone(),
        heads.clone(),
        retain_data(),
        tune_cfg(3),
        tmp.path(),
    )
    .unwrap();
    let first = t.step().unwrap();
    assert!(
        first.loss.abs() < 1e-6 && first.grad_norm < 1e-5,
        "the teacher is the model itself: loss {} gradient norm {}",
        first.loss,
        first.grad_norm
    );

    // Move the tuned slices (CE on other replies), then score the retain examples.
    let mut m2 = tiny();
    let teachers = train::soft_targets(&m2, &[], &retain_data(), 32).unwrap();
    let mut ce: Vec<TrainSeq> = retain_data();
    for s in &mut ce {
        s.retain = false;
    }
    let tmp2 = tempfile::tempdir().unwrap();
    let mut t2 = Trainer::new(m2, mask, heads, ce, tune_cfg(3), tmp2.path()).unwrap();
    t2.run_until(3).unwrap();
    m2 = t2.model;
    let mut scored = retain_data();
    for (s, p) in scored.iter_mut().zip(teachers) {
        s.teacher = p;
    }
    let (kl, n) = train::loss(&m2, &[], &scored).unwrap();
    assert!(n > 0 && kl > 1e-4, "KL after training {kl} over {n} rows");
}

#[test]
fn a_resumed_run_keeps_the_original_models_teacher() {
    // Uninterrupted 3 steps vs 1 step, resume, 2 more: same weights bit for bit (the
    // resumed trainer must take its teacher from the original weights, not the checkpoint).
    let heads = vec![HeadId::new(0, 1)];
    let mk = |tmp: &std::path::Path| {
        let m = tiny();
        let mask = Mask::heads(&m.cfg, &heads, HeadProjs::default_for(&m.cfg)).unwrap();
        let mut data = retain_data();
        data[0].retain = false; // something to learn, so the weights move
        Trainer::new(m, mask, heads.clone(), data, tune_cfg(3), tmp).unwrap()
    };
    let a = tempfile::tempdir().unwrap();
    let mut ta = mk(a.path());
    ta.run_until(3).unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut tb = mk(b.path());
    tb.run_until(1).unwrap();
    tb.save_checkpoint().unwrap();
    drop(tb);
    let mut tb = mk(b.path());
    assert!(tb.resume().unwrap());
    tb.run_until(3).unwrap();
    let (wa, wb) = (
        ta.model.host_weights().unwrap(),
        tb.model.host_weights().unwrap(),
    );
    let (qa, qb) = (&wa.layers[0].wq, &wb.layers[0].wq);
    assert!(
        qa.data
            .iter()
            .zip(&qb.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "resumed weights differ from the uninterrupted run"
    );
    assert!(
        ta.history.iter().skip(1).all(|l| l.loss > 0.0),
        "retain rows scored once the weights moved"
    );
}

#[test]
fn the_loss_field_of_a_data_line_is_checked() {
    let msgs = r#""messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]"#;
    let c = parse_jsonl(
        &format!("{{{msgs}}}\n{{{msgs}, \"loss\": \"retain\"}}\n{{{msgs}, \"loss\": \"ce\"}}\n"),
        "d.jsonl",
    )
    .unwrap();
    assert_eq!(
        c.iter().map(|c| c.retain).collect::<Vec<_>>(),
        [false, true, false]
    );
    let e = parse_jsonl(
        &format!("{{{msgs}}}\n{{{msgs}, \"loss\": \"kl\"}}\n"),
        "d.jsonl",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("\"kl\""), "{e}");
}

#[test]
fn a_retain_sequence_without_its_teacher_is_an_error() {
    let m = tiny();
    let mut s = retain_data();
    s.truncate(1);
    let e = train::loss(&m, &[], &s).unwrap_err().to_string();
    assert!(e.contains("retain") && e.contains("teacher"), "{e}");
}
