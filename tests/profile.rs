//! The profiling wrapper (`pinpoint::profile`): results bit for bit those of the wrapped
//! backend, analytic FLOP counts against independent counts, the accounting of the table
//! against the wall time, and trace.json against the Trace Event Format's fields and
//! nesting.

mod common;

use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::{AttnShape, Backend, Region, SeqSpan, Span, TrainBackend};
use pinpoint::heads::{HookPoint, Positions};
use pinpoint::model::HostTensor;
use pinpoint::profile::{report, Profile, Profiled};
use pinpoint::tune::trainer::BenchStep;
use pinpoint::{Model, Taps};
use serde_json::Value;
use std::time::Instant;

fn tiny<B: TrainBackend>(b: B) -> Model<B> {
    Model::load_on(&common::fixture("tiny-llama"), b).unwrap()
}

fn profiled() -> Model<Profiled<CpuBackend>> {
    tiny(Profiled::new(CpuBackend).unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn seqs() -> Vec<Vec<u32>> {
    vec![
        (0..20).map(|i| (i * 7 + 3) % 128).collect(),
        (0..9).collect(),
    ]
}

#[test]
fn wrapper_changes_no_result_bit() {
    let taps = Taps::new()
        .with_logits(Positions::All)
        .capture_all_z(3, Positions::All)
        .capture(HookPoint::ResidPre(2), Positions::All);
    let (plain, prof) = (tiny(CpuBackend), profiled());
    let (a, b) = (
        plain.forward(&seqs(), &taps).unwrap(),
        prof.forward(&seqs(), &taps).unwrap(),
    );
    assert_eq!(bits(&a.logits.data.data), bits(&b.logits.data.data));
    for (k, c) in &a.captures {
        assert_eq!(bits(&c.data.data), bits(&b.captures[k].data.data), "{k:?}");
    }
    // Two training steps: the updated weights and the optimizer states.
    let step = BenchStep {
        loss_tokens: 5,
        ..BenchStep::new(3, 2, 12)
    };
    let (mut ta, mut tb) = (
        step.trainer(tiny(CpuBackend)).unwrap(),
        step.trainer(profiled()).unwrap(),
    );
    for _ in 0..2 {
        let (la, lb) = (ta.step().unwrap(), tb.step().unwrap());
        assert_eq!(la.loss.to_bits(), lb.loss.to_bits());
        assert_eq!(la.grad_norm.to_bits(), lb.grad_norm.to_bits());
    }
    let (wa, wb) = (ta.final_weights().unwrap(), tb.final_weights().unwrap());
    for (la, lb) in wa.layers.iter().zip(&wb.layers) {
        assert_eq!(bits(&la.wq.data), bits(&lb.wq.data));
        assert_eq!(bits(&la.wo.data), bits(&lb.wo.data));
    }
    assert!(!tb.model.backend.finish().unwrap().ops.is_empty());
}

/// The FLOPs of the last recorded op.
fn last_flops(b: &Profiled<CpuBackend>) -> f64 {
    b.finish().unwrap().ops.last().expect("an op").cost.flops
}

fn t(shape: &[usize], seed: u64) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(
        shape.to_vec(),
        pinpoint::backend::uniform_host(n, seed, 1.0, 0.0),
    )
}

#[test]
fn flop_counts_match_counting_each_multiply_add() {
    let b = Profiled::new(CpuBackend).unwrap();
    // linear x [n, k] @ w [m, k]^T: n*m dot products of length k.
    let (n, k, m) = (7, 13, 5);
    let (x, w) = (
        b.upload(&t(&[n, k], 1)).unwrap(),
        b.upload(&t(&[m, k], 2)).unwrap(),
    );
    b.linear(&x, &w).unwrap();
    assert_eq!(last_flops(&b), (2 * n * k * m) as f64);
    // The weight gradient of a row region [2, 2 + 3) of w: 3 rows x k, each a sum over n.
    let dy = b.upload(&t(&[n, m], 3)).unwrap();
    let reg = Region::Rows { start: 2, len: 3 };
    let mut dw = b.zeros(&[3, k]).unwrap();
    b.linear_bwd_weight(&dy, &x, reg, &mut dw).unwrap();
    assert_eq!(last_flops(&b), (2 * 3 * k * n) as f64);
    // Attention: 2 sequences, GQA 4 query heads on 2 kv heads, head_dim 8, window 3. Count
    // the visible (query, key) pairs one by one: QK^T and PV are 2 * D FLOPs each per pair
    // and head, the softmax 5 per pair and head.
    let (h, g, d, win) = (4, 2, 8, 3);
    let spans = [
        SeqSpan {
            q_start: 0,
            q_len: 6,
            kv_start: 0,
            pos0: 0,
            kv_new: None,
        },
        SeqSpan {
            q_start: 6,
            q_len: 4,
            kv_start: 6,
            pos0: 0,
            kv_new: None,
        },
    ];
    let mut pairs = 0;
    for s in &spans {
        for i in 0..s.q_len {
            for j in 0..=i {
                pairs += usize::from(i - j < win);
            }
        }
    }
    let q = b.upload(&t(&[10, h * d], 4)).unwrap();
    let kv = b.upload(&t(&[10, g * d], 5)).unwrap();
    let shape = AttnShape {
        n_heads: h,
        n_kv_heads: g,
        head_dim: d,
        window: Some(win),
    };
    b.attention(&q, &kv, &kv, &spans, shape, &[]).unwrap();
    assert_eq!(last_flops(&b), (pairs * h * (4 * d + 5)) as f64);
    // Cross-entropy: 5 per logit.
    let logits = b.upload(&t(&[3, 11], 6)).unwrap();
    b.xent_fwd_bwd(&logits, &[Some(1), None, Some(10)], 1.0)
        .unwrap();
    assert_eq!(last_flops(&b), (5 * 3 * 11) as f64);
}

/// One recorded SPT step on the tiny model.
fn train_profile() -> (Profile, f64) {
    let step = BenchStep {
        loss_tokens: 4,
        ..BenchStep::new(2, 2, 16)
    };
    let mut tr = step.trainer(profiled()).unwrap();
    tr.step().unwrap();
    let t0 = Instant::now();
    tr.model.backend.restart().unwrap();
    tr.step().unwrap();
    let p = tr.model.backend.finish().unwrap();
    (p, t0.elapsed().as_secs_f64())
}

#[test]
fn table_rows_add_up_to_the_wall_time() {
    let (p, outer) = train_profile();
    // Ops never overlap and lie inside the run.
    let mut ops = p.ops.clone();
    ops.sort_by(|a, b| a.start.total_cmp(&b.start));
    for w in ops.windows(2) {
        assert!(
            w[1].start >= w[0].end,
            "{} overlaps {}",
            w[1].name,
            w[0].name
        );
    }
    assert!(ops[0].start >= 0.0 && ops.last().unwrap().end <= p.wall_s);
    assert!(
        p.wall_s <= outer,
        "profile wall {} > {outer} measured around it",
        p.wall_s
    );
    // Every op is in exactly one row; rows and per-layer rows both sum to the ops' time,
    // and the ops' time plus `outside ops` is the wall.
    let rows = report::rows(&p);
    let sum: f64 = rows.iter().map(|r| r.total_s).sum();
    let calls: usize = rows.iter().map(|r| r.calls).sum();
    assert_eq!(calls, p.ops.len());
    assert!((sum - p.ops_s()).abs() <= 1e-9 * p.wall_s.max(1.0));
    let by_layer: f64 = report::layer_rows(&p).iter().map(|r| r.total_s).sum();
    assert!((by_layer - sum).abs() <= 1e-9 * p.wall_s.max(1.0));
    let j = report::profile_json(&p, None, Value::Null);
    let outside = j["outside_ops_s"].as_f64().unwrap();
    assert!(outside >= 0.0);
    assert!((outside + sum - p.wall_s).abs() <= 1e-9 * p.wall_s.max(1.0));
    // The phases of an SPT step, and the table names them.
    for phase in ["forward", "loss", "backward", "optimizer"] {
        assert!(rows.iter().any(|r| r.phase == phase), "no {phase} row");
    }
    let table = report::table(&p, None);
    assert!(table.contains("linear_bwd_input") && table.contains("outside ops"));
    // Forward linears ran in every layer: 7 per layer (q, k, v, o, gate, up, down).
    let lin = rows
        .iter()
        .find(|r| r.phase == "forward" && r.op == "linear")
        .unwrap();
    assert_eq!(lin.layers, vec![0, 1, 2]);
    assert_eq!(lin.calls, 21);
}

#[test]
fn trace_has_the_format_fields_and_spans_enclose_their_ops() {
    let (p, _) = train_profile();
    let trace = report::trace_json(&p);
    // Through text, as a viewer reads it.
    let v: Value = serde_json::from_str(&serde_json::to_string(&trace).unwrap()).unwrap();
    let ev = v["traceEvents"].as_array().expect("traceEvents array");
    let mut spans = vec![];
    let mut ops = vec![];
    for e in ev {
        let ph = e["ph"].as_str().expect("ph");
        assert!(
            e["name"].is_string() && e["pid"].is_u64() && e["tid"].is_u64(),
            "{e}"
        );
        match ph {
            "M" => assert!(e["args"]["name"].is_string()),
            "X" => {
                let (ts, dur) = (e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap());
                assert!(ts >= 0.0 && dur >= 0.0, "{e}");
                let item = (e["name"].as_str().unwrap().to_string(), ts, ts + dur);
                match e["cat"].as_str() {
                    Some("span") => spans.push(item),
                    Some("op") => ops.push(item),
                    c => panic!("category {c:?}"),
                }
            }
            other => panic!("phase type {other}"),
        }
    }
    let inside = |a: &(String, f64, f64), b: &(String, f64, f64)| b.1 <= a.1 && a.2 <= b.2;
    // Each layer's span sits inside its phase's span; each op inside a span unless it ran
    // outside every span.
    for l in 0..3 {
        let name = format!("layer {l}");
        let layer: Vec<_> = spans.iter().filter(|s| s.0 == name).collect();
        assert!(layer.len() >= 2, "{name}: forward and backward");
        for s in layer {
            assert!(spans
                .iter()
                .any(|ph| ["forward", "backward"].contains(&ph.0.as_str()) && inside(s, ph)));
        }
    }
    let outside = p.ops.iter().filter(|o| o.span.is_none()).count();
    let enclosed = ops
        .iter()
        .filter(|o| spans.iter().any(|s| inside(o, s)))
        .count();
    assert_eq!(enclosed + outside, ops.len());
    assert!(ops.iter().any(|o| o.0 == "attention_bwd"));
}

#[test]
fn spans_are_free_on_other_backends_and_balanced_here() {
    // The plain backend ignores spans; the wrapper refuses to finish inside one.
    let _ = Span::new(&CpuBackend, "forward", None);
    let b = Profiled::new(CpuBackend).unwrap();
    let s = Span::new(&b, "forward", None);
    assert!(b.finish().is_err());
    drop(s);
    let p = b.finish().unwrap();
    assert_eq!(p.spans.len(), 1);
    assert_eq!(p.spans[0].label(), "forward");
}

#[test]
fn cli_writes_the_table_profile_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["profile", "train", "--model"])
        .arg(common::fixture("tiny-llama"))
        .args([
            "--k",
            "2",
            "--batch",
            "2",
            "--seq",
            "16",
            "--loss-tokens",
            "4",
            "--no-ceilings",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("linear_bwd_input") && stdout.contains("outside ops"),
        "{stdout}"
    );
    let pj: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("profile.json")).unwrap()).unwrap();
    assert_eq!(pj["workload"]["what"], "train");
    assert!(pj["rows"].as_array().unwrap().len() > 10);
    let tj: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("trace.json")).unwrap()).unwrap();
    assert!(tj["traceEvents"].as_array().unwrap().len() > 50);
}

/// On the GPU: device timing events, results bit-identical to the unwrapped backend, and
/// the kernels' time inside the step's wall.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a GPU"]
fn cuda_profile_uses_device_time_and_changes_no_bit() {
    use pinpoint::backend::cuda::CudaBackend;
    let gpu = || {
        let b = CudaBackend::new(0).expect("a CUDA device");
        b.load_kernels().unwrap();
        b
    };
    let step = BenchStep {
        loss_tokens: 4,
        ..BenchStep::new(2, 2, 16)
    };
    let mut plain = step.trainer(tiny(gpu())).unwrap();
    let mut prof = step.trainer(tiny(Profiled::new(gpu()).unwrap())).unwrap();
    for _ in 0..2 {
        let (a, b) = (plain.step().unwrap(), prof.step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    }
    prof.model.backend.restart().unwrap();
    prof.step().unwrap();
    let p = prof.model.backend.finish().unwrap();
    assert_eq!(p.clock, "device");
    let mut ops = p.ops.clone();
    ops.sort_by(|a, b| a.start.total_cmp(&b.start));
    for w in ops.windows(2) {
        assert!(
            w[1].start >= w[0].end - 1e-6,
            "{} overlaps {}",
            w[1].name,
            w[0].name
        );
    }
    assert!(
        p.ops_s() <= p.wall_s,
        "kernels {} s > wall {} s",
        p.ops_s(),
        p.wall_s
    );
    eprintln!(
        "cuda tiny step: kernels {:.3} ms of {:.3} ms wall",
        1e3 * p.ops_s(),
        1e3 * p.wall_s
    );
}

#[test]
fn cli_refuses_bad_sizes_and_outputs_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let model = common::fixture("tiny-llama");
    for (args, want) in [
        (vec!["--batch", "0"], "--batch"),
        (vec!["--seq", "1"], "--seq"),
        (vec!["--k", "0"], "--k"),
        (vec!["--out", file.to_str().unwrap()], "--out"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["profile", "train", "--no-ceilings", "--model"])
            .arg(&model)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
