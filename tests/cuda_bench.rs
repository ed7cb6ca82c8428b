//! Timings of the CUDA backend in real model shapes with random weights (the device machine
//! cannot download models), comparable with /work/shared/baselines/torch_peer.py (same
//! shapes, batch 8 x 128 tokens). `#[ignore]`d: scripts/gpu-check.sh runs it with
//! `--ignored`; prints one JSON row per measurement and, with `PINPOINT_BENCH_OUT`, writes
//! them all to that file. `PINPOINT_BENCH_SHAPES=smollm2-135m,llama2-7b` picks shapes.
#![cfg(feature = "cuda")]

use pinpoint::backend::cuda::{cuda_available, init, CudaBackend, Gemm};
use pinpoint::backend::Backend;
use pinpoint::generate::{generate, GenConfig};
use pinpoint::heads::{Positions, Taps};
use pinpoint::model::checkpoint::{LayerWeights, ModelWeights};
use pinpoint::model::{ModelConfig, StoreDtype};
use pinpoint::Model;
use std::time::Instant;

fn shape(name: &str) -> Option<serde_json::Value> {
    let v = match name {
        "smollm2-135m" => serde_json::json!({"hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "tie_word_embeddings": true}),
        "llama2-7b" => serde_json::json!({"hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        "mistral-7b" => serde_json::json!({"hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 32000, "tie_word_embeddings": false}),
        _ => return None,
    };
    let mut v = v;
    let o = v.as_object_mut().unwrap();
    o.insert(
        "architectures".into(),
        serde_json::json!(["LlamaForCausalLM"]),
    );
    o.insert("model_type".into(), "llama".into());
    o.insert("rms_norm_eps".into(), 1e-5.into());
    o.insert("rope_theta".into(), 10000.0.into());
    o.insert("max_position_embeddings".into(), 2048.into());
    o.insert("hidden_act".into(), "silu".into());
    Some(v)
}

/// Cheap deterministic uniform(-scale, scale) values (xorshift), already bf16-exact.
fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A random model of `cfg`'s shapes on `b`, made on the device by `init_uniform` (host
/// generation plus upload of 7B weights took 16 s); every tensor has its own seed.
fn random_model(cfg: ModelConfig, b: CudaBackend) -> Model<CudaBackend> {
    let (d, f, q, kv, v) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.vocab_size,
    );
    let s = 0.02;
    let mut seed = 0u64;
    let mut r = |shape: &[usize], scale: f32, offset: f32| {
        seed += 1;
        b.uniform(shape, seed, scale, offset).unwrap()
    };
    let layers = (0..cfg.num_hidden_layers)
        .map(|_| LayerWeights {
            attn_norm: r(&[d], 0.0, 1.0),
            wq: r(&[q, d], s, 0.0),
            wk: r(&[kv, d], s, 0.0),
            wv: r(&[kv, d], s, 0.0),
            wo: r(&[d, q], s, 0.0),
            mlp_norm: r(&[d], 0.0, 1.0),
            w_gate: r(&[f, d], s, 0.0),
            w_up: r(&[f, d], s, 0.0),
            w_down: r(&[d, f], s, 0.0),
        })
        .collect();
    let embed = r(&[v, d], 1.0, 0.0);
    let final_norm = r(&[d], 0.0, 1.0);
    let lm_head = (!cfg.tie_word_embeddings).then(|| r(&[v, d], s, 0.0));
    Model {
        cfg,
        weights: ModelWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        },
        backend: b,
        dtype: StoreDtype::BF16,
        dir: None,
    }
}

/// `init_uniform` on the device gives exactly the host reference's values, whatever the
/// launch geometry (sizes across the grid-stride boundary), for weights and constants.
#[test]
fn device_init_matches_the_host_reference() {
    if let Err(why) = cuda_available() {
        if std::env::var("PINPOINT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("no CUDA device: {why}");
        }
        eprintln!("SKIPPED: no CUDA device ({why})");
        return;
    }
    let b = CudaBackend::new(0).unwrap();
    for (n, seed, scale, offset) in [
        (1usize, 1u64, 0.02f32, 0.0f32),
        (1000, 7, 1.0, 0.0),
        (256 * 8192 + 77, 3, 0.02, 0.0),
        (4099, 9, 0.0, 1.0),
    ] {
        let dev = b
            .download(&b.uniform(&[n], seed, scale, offset).unwrap())
            .unwrap();
        let host = init::uniform_host(n, seed, scale, offset);
        assert_eq!(dev.data.len(), n);
        let bad = (0..n).find(|&i| dev.data[i].to_bits() != host[i].to_bits());
        assert!(
            bad.is_none(),
            "n={n} seed={seed}: first mismatch at {bad:?}"
        );
        let (lo, hi) = host
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, c), &x| (a.min(x), c.max(x)));
        assert!(lo >= offset - scale && hi <= offset + scale, "{lo} {hi}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "timing run for the GPU machine (scripts/gpu-check.sh)"]
fn bench_real_shapes() {
    if let Err(why) = cuda_available() {
        if std::env::var("PINPOINT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("no CUDA device: {why}");
        }
        eprintln!("SKIPPED: no CUDA device ({why})");
        return;
    }
    let names =
        std::env::var("PINPOINT_BENCH_SHAPES").unwrap_or_else(|_| "smollm2-135m,llama2-7b".into());
    let (batch, seq) = (8usize, 128usize);
    let mut rows = Vec::new();
    for name in names.split(',') {
        let cfg = ModelConfig::from_json(shape(name).expect("known shape")).unwrap();
        for gemm in [Gemm::Engine, Gemm::Cublas] {
            let b = CudaBackend::new(0).unwrap().with_gemm(gemm);
            b.load_kernels().unwrap();
            let t0 = Instant::now();
            let m = random_model(cfg.clone(), b);
            let load_s = t0.elapsed().as_secs_f64();
            let vocab = cfg.vocab_size as u32;
            let seqs: Vec<Vec<u32>> = (0..batch)
                .map(|i| {
                    randn(seq, 100 + i as u64, 1.0)
                        .iter()
                        .map(|x| ((x.abs() * 1e6) as u32) % vocab)
                        .collect()
                })
                .collect();
            let taps = Taps::new().with_logits(Positions::Last);
            m.forward(&seqs, &taps).unwrap(); // warm-up (module loads, allocations)
            let times: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    m.forward(&seqs, &taps).unwrap(); // ends in a download: synchronized
                    t.elapsed().as_secs_f64()
                })
                .collect();
            let fwd = median(times);
            let row = serde_json::json!({"shape": name, "gemm": format!("{gemm:?}"),
                "what": "forward", "batch": batch, "seq": seq, "logits": "last",
                "ms": fwd * 1e3, "tok_per_s": (batch * seq) as f64 / fwd, "upload_s": load_s});
            println!("{row}");
            rows.push(row);
            for db in [1usize, 8] {
                let gc = GenConfig {
                    max_new_tokens: 16,
                    ..Default::default()
                };
                let prompts = &seqs[..db];
                let t = Instant::now();
                let out = generate(&m, prompts, &gc, &Taps::new(), None, &mut |_, _| {}).unwrap();
                let el = t.elapsed().as_secs_f64();
                let steps = out.iter().map(|g| g.tokens.len()).max().unwrap_or(1).max(1);
                let row = serde_json::json!({"shape": name, "gemm": format!("{gemm:?}"),
                    "what": "decode (prefill + steps, greedy)", "batch": db, "prompt": seq,
                    "steps": steps, "ms_per_step_incl_prefill": el * 1e3 / steps as f64});
                println!("{row}");
                rows.push(row);
            }
        }
    }
    if let Ok(p) = std::env::var("PINPOINT_BENCH_OUT") {
        std::fs::write(p, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    }
}
