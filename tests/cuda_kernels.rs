//! The CUDA backend against the f32 CPU oracle: every kernel on random inputs of awkward
//! sizes (not tile multiples), outputs poisoned with NaN before each launch (so an unwritten
//! element fails), relative error ||gpu - cpu|| / ||cpu|| <= 1e-2 for bf16; then whole-model
//! parity on the tiny fixtures (logits, z of every head, patterns, patched and ablated runs,
//! KV-cache decode).
//!
//! Every test that needs the device is `#[ignore = "needs a GPU"]`: `cargo test` lists it as
//! ignored; scripts/gpu-check.sh runs it with `--include-ignored`, and without a GPU it fails.
#![cfg(feature = "cuda")]

mod cuda_common;
use cuda_common::*;

use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::cuda::{attn_tensor_cores, cuda_available, AttnKernels, CudaBackend, Gemm};
use pinpoint::backend::{AttnShape, Backend, SeqSpan};
use pinpoint::heads::{HeadId, Positions, Taps};
use pinpoint::model::checkpoint::load_model_dir;
use pinpoint::model::HostTensor;
use pinpoint::Model;
use rand::Rng;

/// bf16 operands, f32 accumulation: 1e-3 .. 1e-2 expected.
const KERNEL_TOL: f32 = 1e-2;
/// Whole tiny models: bf16 rounding at every op boundary through 3 layers.
const MODEL_TOL: f32 = 3e-2;

fn rng(seed: u64) -> rand::rngs::StdRng {
    seeded(seed, 0x5eed_cafe)
}

/// The GPU checks are per element as well as whole-tensor: in a 33 x 4100 output (the
/// RMSNorm case) one element wrong by 3x its size keeps the norm error under 1e-2, and only
/// the per-element bound sees it. Runs everywhere (no device).
#[test]
fn one_wrong_element_fails_the_check() {
    let mut r = seeded(5, 0);
    let want = rand_t(&mut r, &[33, 4100], 1.0).data;
    let mut got = want.clone();
    let i = want
        .iter()
        .position(|x| (0.45..0.55).contains(&x.abs()))
        .unwrap();
    got[i] = 4.0 * want[i];
    assert!(nrel("norm only", &got, &want) < 1e-2);
    let caught = std::panic::catch_unwind(|| check("one wrong element", &got, &want, 1e-2));
    assert!(
        caught.is_err(),
        "a 3x error in one element passed the check"
    );
    let near: Vec<f32> = want.iter().map(|&x| bf16r(x * 1.003)).collect();
    check("bf16 rounding only", &near, &want, 1e-2);
}

/// The tensor-core attention backward gave a wrong dq for a sliding window of 1 on an H100
/// (2026-11-27, cause not found): windows narrower than a tile are routed to the CUDA-core
/// kernels. This pins the routing (no device needed) until the kernel is fixed and a GPU
/// run shows it.
#[test]
fn narrow_windows_keep_off_the_tensor_core_backward() {
    use pinpoint::backend::cuda::attn_bwd_tensor_cores;
    let spans = [SeqSpan {
        q_start: 0,
        q_len: 100,
        kv_start: 0,
        pos0: 0,
        kv_new: None,
    }];
    let shape = |window| AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        window,
    };
    assert!(attn_tensor_cores(&spans, shape(Some(1))));
    for w in [1, 5, 33, 63] {
        assert!(!attn_bwd_tensor_cores(&spans, shape(Some(w))), "window {w}");
    }
    for w in [Some(64), Some(4096), None] {
        assert!(attn_bwd_tensor_cores(&spans, shape(w)), "window {w:?}");
    }
}

#[test]
fn cuda_unavailable_reason_is_printed() {
    // Runs everywhere: the reason is a readable sentence, never a panic.
    match cuda_available() {
        Ok(()) => eprintln!("CUDA available"),
        Err(why) => {
            assert!(!why.is_empty());
            eprintln!("SKIPPED: no CUDA device ({why})");
            assert!(CudaBackend::new(0).is_err());
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn linear_engine_and_cublas_match_cpu() {
    let g = gpu("linear");
    let cpu = CpuBackend;
    let mut r = rng(1);
    // (n, k, m): decode (gemv), tile edges, k % 8 != 0 (the non-cp.async load path).
    let shapes = [
        (1, 48, 80),
        (3, 64, 130),
        (8, 96, 33),
        (9, 40, 70),
        (65, 72, 129),
        (130, 200, 67),
        (257, 1000, 515),
        (17, 45, 31),
        (5, 13, 7),
        (70, 13, 9),
    ];
    for (n, k, m) in shapes {
        let x = rand_t(&mut r, &[n, k], 1.0);
        let w = rand_t(&mut r, &[m, k], 0.5);
        let want = cpu.linear(&x, &w).unwrap();
        let (xd, wd) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        for gemm in [Gemm::Engine, Gemm::Cublas] {
            let y = g.linear_with(&xd, &wd, gemm).unwrap();
            assert_eq!(g.shape(&y), &[n, m]);
            let got = g.download(&y).unwrap();
            check(
                &format!("linear {gemm:?} {n}x{k}x{m}"),
                &got.data,
                &want.data,
                KERNEL_TOL,
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_add_swiglu_match_cpu() {
    let g = gpu("rmsnorm");
    let cpu = CpuBackend;
    let mut r = rng(2);
    for (n, d) in [(1, 48), (7, 333), (33, 4100)] {
        let x = rand_t(&mut r, &[n, d], 2.0);
        let y = rand_t(&mut r, &[n, d], 1.0);
        let w = rand_t(&mut r, &[d], 1.0);
        let (xd, yd, wd) = (
            g.upload(&x).unwrap(),
            g.upload(&y).unwrap(),
            g.upload(&w).unwrap(),
        );
        let got = g.download(&g.rmsnorm(&xd, &wd, 1e-5).unwrap()).unwrap();
        check(
            &format!("rmsnorm {n}x{d}"),
            &got.data,
            &cpu.rmsnorm(&x, &w, 1e-5).unwrap().data,
            KERNEL_TOL,
        );
        // add_assign, then the fused add + norm against add-then-norm.
        let mut xs = x.clone();
        cpu.add_assign(&mut xs, &y).unwrap();
        let mut xa = g.upload(&x).unwrap();
        g.add_assign(&mut xa, &yd).unwrap();
        check(
            &format!("add {n}x{d}"),
            &g.download(&xa).unwrap().data,
            &xs.data,
            KERNEL_TOL,
        );
        let mut xf = g.upload(&x).unwrap();
        let normed = g.add_rmsnorm(&mut xf, &yd, &wd, 1e-5).unwrap();
        check(
            &format!("add_rmsnorm x {n}x{d}"),
            &g.download(&xf).unwrap().data,
            &xs.data,
            KERNEL_TOL,
        );
        check(
            &format!("add_rmsnorm out {n}x{d}"),
            &g.download(&normed).unwrap().data,
            &cpu.rmsnorm(&xs, &w, 1e-5).unwrap().data,
            KERNEL_TOL,
        );
        let s = g.swiglu(&xd, &yd).unwrap();
        check(
            &format!("swiglu {n}x{d}"),
            &g.download(&s).unwrap().data,
            &cpu.swiglu(&x, &y).unwrap().data,
            KERNEL_TOL,
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn rope_matches_cpu() {
    let g = gpu("rope");
    let cpu = CpuBackend;
    let mut r = rng(3);
    for (n, heads, dh, theta) in [
        (5, 4, 8, 10000.0),
        (37, 3, 16, 10000.0),
        (19, 5, 64, 1e6),
        (3, 2, 128, 5e5),
    ] {
        let x = rand_t(&mut r, &[n, heads * dh], 1.0);
        let pos: Vec<usize> = (0..n).map(|_| r.gen_range(0..5000)).collect();
        // The last shape takes Llama-3.1's scaled table (the kernel reads any table).
        let inv = if dh == 128 {
            use pinpoint::model::rope::{Rope, RopeScaling};
            Rope {
                theta,
                head_dim: dh,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
            }
            .table(0)
            .inv_freq
        } else {
            pinpoint::backend::rope_inv_freq(dh, theta)
        };
        let mut want = x.clone();
        cpu.rope(&mut want, dh, &pos, &inv).unwrap();
        let mut xd = g.upload(&x).unwrap();
        g.rope(&mut xd, dh, &pos, &inv).unwrap();
        check(
            &format!("rope {n}x{heads}x{dh}"),
            &g.download(&xd).unwrap().data,
            &want.data,
            KERNEL_TOL,
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn attention_matches_cpu_with_gqa_windows_and_cache_layout() {
    let g = gpu("attention");
    let cpu = CpuBackend;
    let mut r = rng(4);
    // (H, G, D, window, span lengths, pos0 of each span (cache layout when any > 0))
    type Case = (usize, usize, usize, Option<usize>, Vec<usize>, Vec<usize>);
    let cases: Vec<Case> = vec![
        (4, 4, 16, None, vec![7], vec![0]),
        (8, 2, 8, Some(5), vec![1, 5, 37], vec![0, 0, 0]),
        (6, 2, 64, None, vec![70, 3], vec![0, 0]),
        (4, 1, 128, Some(33), vec![50, 1], vec![0, 0]),
        (9, 3, 64, None, vec![1, 1, 2], vec![40, 7, 0]),
        (8, 2, 8, Some(5), vec![1, 3], vec![12, 2]),
        (2, 2, 256, None, vec![9], vec![0]),
        // Tensor-core path (whole packed sequences, head_dim 64 / 128): unequal lengths,
        // not multiples of 64, length 1, GQA, windows shorter and longer than a tile.
        (9, 3, 64, None, vec![1, 70, 130, 64], vec![0, 0, 0, 0]),
        (8, 2, 64, Some(40), vec![129, 1, 65], vec![0, 0, 0]),
        (4, 4, 128, None, vec![64, 17, 1], vec![0, 0, 0]),
        (6, 1, 128, Some(70), vec![150, 2], vec![0, 0]),
        (2, 1, 64, Some(1), vec![70], vec![0]),
        // head_dim 64 but a cache layout: the CUDA-core kernels.
        (4, 2, 64, Some(40), vec![3, 66], vec![70, 5]),
    ];
    let mut tc_cases = 0;
    for (h, gq, d, window, lens, pos0s) in cases {
        let cached = pos0s.iter().any(|&p| p > 0);
        let n: usize = lens.iter().sum();
        let capacity = lens.iter().zip(&pos0s).map(|(l, p)| l + p).max().unwrap() + 3;
        let mut spans = Vec::new();
        let mut q_start = 0;
        for (i, (&l, &p)) in lens.iter().zip(&pos0s).enumerate() {
            spans.push(SeqSpan {
                q_start,
                q_len: l,
                kv_start: if cached { i * capacity } else { q_start },
                pos0: p,
                kv_new: None,
            });
            q_start += l;
        }
        let kv_rows = if cached { lens.len() * capacity } else { n };
        let q = rand_t(&mut r, &[n, h * d], 2.0);
        let k = rand_t(&mut r, &[kv_rows, gq * d], 2.0);
        let v = rand_t(&mut r, &[kv_rows, gq * d], 1.0);
        let shape = AttnShape {
            n_heads: h,
            n_kv_heads: gq,
            head_dim: d,
            window,
        };
        let want: Vec<(usize, usize)> = (0..lens.len()).map(|s| (s, (s * 5 + 1) % h)).collect();
        let (zc, pc) = cpu.attention(&q, &k, &v, &spans, shape, &want).unwrap();
        let (qd, kd, vd) = (
            g.upload(&q).unwrap(),
            g.upload(&k).unwrap(),
            g.upload(&v).unwrap(),
        );
        for kernels in [AttnKernels::Auto, AttnKernels::Simple] {
            let tc = kernels == AttnKernels::Auto && attn_tensor_cores(&spans, shape);
            if kernels == AttnKernels::Simple && !attn_tensor_cores(&spans, shape) {
                continue; // Auto already ran the CUDA-core kernels
            }
            tc_cases += usize::from(tc);
            let (zg, pg) = g
                .attention_with(&qd, &kd, &vd, &spans, shape, &want, kernels)
                .unwrap();
            let path = if tc { "tc" } else { "simple" };
            let what =
                format!("attention[{path}] H{h} G{gq} D{d} w{window:?} lens{lens:?} pos0{pos0s:?}");
            check(
                &format!("{what} z"),
                &g.download(&zg).unwrap().data,
                &zc.data,
                KERNEL_TOL,
            );
            assert_eq!(pg.len(), pc.len(), "{what}: pattern count");
            for (a, b) in pg.iter().zip(&pc) {
                assert_eq!((a.seq, a.head), (b.seq, b.head));
                assert_eq!(a.probs.shape, b.probs.shape);
                check(
                    &format!("{what} probs s{} h{}", a.seq, a.head),
                    &a.probs.data,
                    &b.probs.data,
                    KERNEL_TOL,
                );
                // Masked entries are exactly zero on both sides.
                for (x, y) in a.probs.data.iter().zip(&b.probs.data) {
                    assert_eq!(*x == 0.0, *y == 0.0, "{what}: mask differs");
                }
            }
        }
    }
    assert_eq!(tc_cases, 7, "cases that took the tensor-core kernels");
}

#[test]
#[ignore = "needs a GPU"]
fn row_ops_embed_and_slices_are_exact() {
    let g = gpu("row ops");
    let cpu = CpuBackend;
    let mut r = rng(5);
    let table = rand_t(&mut r, &[131, 37], 1.0);
    let ids: Vec<u32> = (0..29).map(|_| r.gen_range(0..131)).collect();
    let td = g.upload(&table).unwrap();
    let e = g.download(&g.embed(&td, &ids).unwrap()).unwrap();
    assert_eq!(e.data, cpu.embed(&table, &ids).unwrap().data, "embed");
    assert!(g.embed(&td, &[131]).is_err(), "out-of-vocab id must fail");

    let rows: Vec<usize> = vec![5, 0, 130, 5, 77];
    let gr = g.download(&g.gather_rows(&td, &rows).unwrap()).unwrap();
    assert_eq!(
        gr.data,
        cpu.gather_rows(&table, &rows).unwrap().data,
        "gather_rows"
    );
    assert_eq!(
        g.download(&g.gather_rows(&td, &[]).unwrap()).unwrap().shape,
        vec![0, 37]
    );

    let src = rand_t(&mut r, &[3, 37], 1.0);
    let dst_rows = [9, 130, 0];
    let mut want = table.clone();
    cpu.scatter_rows(&mut want, &dst_rows, &src).unwrap();
    let mut dd = g.upload(&table).unwrap();
    g.scatter_rows(&mut dd, &dst_rows, &g.upload(&src).unwrap())
        .unwrap();
    assert_eq!(g.download(&dd).unwrap().data, want.data, "scatter_rows");

    // Patch: distinct values per slice. Ablate: one slice repeated on every row.
    let vals = rand_t(&mut r, &[3, 8], 1.0);
    let (srows, scols) = ([1, 60, 1], [0, 29, 16]);
    cpu.write_slices(&mut want, &srows, &scols, &vals).unwrap();
    g.write_slices(&mut dd, &srows, &scols, &vals).unwrap();
    assert_eq!(
        g.download(&dd).unwrap().data,
        want.data,
        "write_slices (patch)"
    );
    let one = rand_t(&mut r, &[1, 5], 1.0);
    let all: Vec<usize> = (0..131).collect();
    let rep = HostTensor::new(vec![131, 5], one.data.repeat(131));
    cpu.write_slices(&mut want, &all, &vec![11; 131], &rep)
        .unwrap();
    g.write_slices(&mut dd, &all, &vec![11; 131], &rep).unwrap();
    assert_eq!(
        g.download(&dd).unwrap().data,
        want.data,
        "write_slices (ablate)"
    );
}

#[test]
#[ignore = "needs a GPU"]
fn argmax_rows_matches_host_argmax_with_ties() {
    let g = gpu("argmax");
    let mut r = rng(6);
    let mut l = rand_t(&mut r, &[6, 32003], 4.0);
    // Ties: row 2 has its max at two places; row 5 is all equal.
    let m = l.data[2 * 32003..3 * 32003]
        .iter()
        .copied()
        .fold(f32::MIN, f32::max);
    l.data[2 * 32003 + 31000] = m;
    l.data[5 * 32003..].iter_mut().for_each(|x| *x = -1.5);
    let got = g.argmax_rows(&g.upload(&l).unwrap()).unwrap();
    let want: Vec<u32> = l
        .data
        .chunks(32003)
        .map(pinpoint::generate::argmax)
        .collect();
    assert_eq!(got, want);
}

fn both(name: &str, g: CudaBackend) -> (Model<CpuBackend>, Model<CudaBackend>) {
    let dir = fixture(name);
    let cpu = Model::load_cpu(&dir).unwrap();
    let (cfg, w, _) = load_model_dir(&dir).unwrap();
    // The oracle runs on the bf16-rounded weights the GPU holds.
    let w = w
        .try_map(|_, t| {
            anyhow::Ok(HostTensor::new(
                t.shape.clone(),
                t.data.iter().map(|&x| bf16r(x)).collect(),
            ))
        })
        .unwrap();
    let cpu = Model::from_host(cpu.cfg.clone(), &w, CpuBackend).unwrap();
    let gpu = Model::from_host(cfg, &w, g).unwrap();
    (cpu, gpu)
}

fn prompts(vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut r = rng(seed);
    [11usize, 4, 23]
        .iter()
        .map(|&n| (0..n).map(|_| r.gen_range(0..vocab as u32)).collect())
        .collect()
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_models_match_cpu_logits_z_patterns_and_taps() {
    for &name in TINY_MODELS {
        let g = gpu(&format!("model parity {name}"));
        let (cpu, gpu) = both(name, g);
        let (layers, heads, d) = (cpu.n_layers(), cpu.n_heads(), cpu.head_dim());
        let seqs = prompts(cpu.cfg.vocab_size, 7);
        let mut taps = Taps::new()
            .with_logits(Positions::All)
            .capture_all_z(layers, Positions::All);
        for l in 0..layers {
            taps = taps.pattern(HeadId::new(l, (l * 3) % heads));
        }
        let a = gpu.forward(&seqs, &taps).unwrap();
        let b = cpu.forward(&seqs, &taps).unwrap();
        assert_eq!(a.logits.index, b.logits.index);
        check(
            &format!("{name} logits"),
            &a.logits.data.data,
            &b.logits.data.data,
            MODEL_TOL,
        );
        for l in 0..layers {
            check(
                &format!("{name} z.{l}"),
                &a.z(l).unwrap().data.data,
                &b.z(l).unwrap().data.data,
                MODEL_TOL,
            );
        }
        assert_eq!(a.patterns.len(), b.patterns.len());
        for (key, p) in &b.patterns {
            check(
                &format!("{name} pattern {key:?}"),
                &a.patterns[key].data,
                &p.data,
                MODEL_TOL,
            );
        }

        // Patched and ablated runs: a patch of one head at one position, a mean-ablation.
        let mut r = rng(8);
        let patch: Vec<f32> = (0..d).map(|_| bf16r(r.gen_range(-1.0..1.0))).collect();
        let mean: Vec<f32> = (0..d).map(|_| bf16r(r.gen_range(-0.5..0.5))).collect();
        let taps = Taps::new()
            .with_logits(Positions::Last)
            .capture_all_z(layers, Positions::Last)
            .patch_z(HeadId::new(1, heads - 1), d, 0, 3, patch)
            .ablate_z(HeadId::new(0, 1), d, mean);
        let a = gpu.forward(&seqs, &taps).unwrap();
        let b = cpu.forward(&seqs, &taps).unwrap();
        check(
            &format!("{name} patched logits"),
            &a.logits.data.data,
            &b.logits.data.data,
            MODEL_TOL,
        );
        for l in 0..layers {
            check(
                &format!("{name} patched z.{l}"),
                &a.z(l).unwrap().data.data,
                &b.z(l).unwrap().data.data,
                MODEL_TOL,
            );
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn tiny_models_kv_cache_decode_matches_cpu() {
    for &name in TINY_MODELS {
        let g = gpu(&format!("decode {name}"));
        let (cpu, gpu) = both(name, g);
        let seqs = prompts(cpu.cfg.vocab_size, 9);
        let taps = Taps::new().with_logits(Positions::Last);
        let mut cc = cpu.new_cache(seqs.len(), 40).unwrap();
        let mut gc = gpu.new_cache(seqs.len(), 40).unwrap();
        let ins: Vec<(usize, &[u32])> = seqs.iter().enumerate().map(|(i, s)| (i, &s[..])).collect();
        let a = gpu.forward_cached(&ins, &mut gc, &taps).unwrap();
        let b = cpu.forward_cached(&ins, &mut cc, &taps).unwrap();
        check(
            &format!("{name} prefill"),
            &a.logits.data.data,
            &b.logits.data.data,
            MODEL_TOL,
        );
        // Feed the CPU's greedy tokens to both, so the steps stay comparable.
        let mut next: Vec<u32> = (0..seqs.len())
            .map(|i| pinpoint::generate::argmax(b.logits.row_at(i)))
            .collect();
        for step in 0..6 {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let ins: Vec<(usize, &[u32])> =
                toks.iter().enumerate().map(|(i, t)| (i, &t[..])).collect();
            let a = gpu.forward_cached(&ins, &mut gc, &taps).unwrap();
            let b = cpu.forward_cached(&ins, &mut cc, &taps).unwrap();
            check(
                &format!("{name} decode step {step}"),
                &a.logits.data.data,
                &b.logits.data.data,
                MODEL_TOL,
            );
            next = (0..seqs.len())
                .map(|i| pinpoint::generate::argmax(b.logits.row_at(i)))
                .collect();
        }
    }
}

/// Label logits for path patching: norm and dot in f32 on the device against the f64 host
/// version on the same (bf16-exact) inputs. Nothing is rounded to bf16, so the error is
/// f32 summation order only (1e-5), far below a bf16 output's 4e-3.
#[test]
#[ignore = "needs a GPU"]
fn norm_dot_is_f32_end_to_end() {
    let g = gpu("norm_dot_is_f32_end_to_end");
    let mut r = rng(21);
    for (n, d, m) in [(1, 64, 2), (37, 576, 2), (300, 4096, 2), (5, 130, 7)] {
        // Residual-like rows: a large offset, so bf16 outputs would visibly round.
        let mut x = rand_t(&mut r, &[n, d], 4.0);
        for v in x.data.iter_mut().step_by(3) {
            *v = bf16r(*v + 20.0);
        }
        let norm = rand_t(&mut r, &[d], 1.0);
        let w = rand_t(&mut r, &[m, d], 1.0);
        let want = pinpoint::backend::norm_dot_host(&x, &norm, 1e-5, &w).unwrap();
        let got = g
            .norm_dot(
                &g.upload(&x).unwrap(),
                &g.upload(&norm).unwrap(),
                1e-5,
                &g.upload(&w).unwrap(),
            )
            .unwrap();
        assert_eq!(got.shape, vec![n, m]);
        check(
            &format!("norm_dot {n}x{d}x{m}"),
            &got.data,
            &want.data,
            1e-5,
        );
    }
}
