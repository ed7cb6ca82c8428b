//! The CUDA backend's training ops (`TrainBackend for CudaBackend`) against the f32 CPU
//! oracle: every backward op on random bf16-exact inputs of awkward sizes, outputs poisoned
//! with NaN (an unwritten element fails), relative error ||gpu - cpu|| / ||cpu|| <= 2e-2;
//! region weight gradients accumulating onto nonzero buffers; region reads and writes (bytes
//! outside the region bit-identical); AdamW against `AdamStep::apply` on the host. The whole
//! backward on the tiny fixtures is in `cuda_backward.rs`.
//!
//! Every test that needs the device is `#[ignore = "needs a GPU"]`: `cargo test` lists it as
//! ignored; scripts/gpu-check.sh runs it with `--include-ignored`, and without a GPU it fails.
//! Each measured error is printed as `<what>: rel err <x>` (scripts/gpu-check.sh collects
//! them).
#![cfg(feature = "cuda")]

mod cuda_common;
use cuda_common::*;

use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::cuda::{attn_bwd_tensor_cores, AttnKernels, CudaBackend};
use pinpoint::backend::{AdamStep, ParamState, Region, TrainBackend};
use pinpoint::backend::{AttnShape, Backend, SeqSpan};
use pinpoint::model::HostTensor;
use rand::Rng;

/// One backward op: bf16 inputs and output, f32 inside.
const OP_TOL: f32 = 2e-2;

fn rng(seed: u64) -> rand::rngs::StdRng {
    seeded(seed, 0x7ea1_b0d5)
}

fn down(g: &CudaBackend, t: &<CudaBackend as Backend>::Tensor) -> HostTensor {
    g.download(t).unwrap()
}

#[test]
#[ignore = "needs a GPU"]
fn linear_bwd_input_and_region_weight_grads_match_cpu() {
    let g = gpu("linear_bwd");
    let cpu = CpuBackend;
    let mut r = rng(1);
    // (n, in, out): tiny, odd, tile edges, wide.
    for (n, k, m) in [
        (1, 8, 5),
        (7, 33, 19),
        (65, 72, 129),
        (130, 200, 67),
        (257, 1000, 515),
        (3, 13, 7),
    ] {
        let x = rand_t(&mut r, &[n, k], 1.0);
        let w = rand_t(&mut r, &[m, k], 0.5);
        let dy = rand_t(&mut r, &[n, m], 1.0);
        let (xd, wd, dyd) = (
            g.upload(&x).unwrap(),
            g.upload(&w).unwrap(),
            g.upload(&dy).unwrap(),
        );
        let dx = g.linear_bwd_input(&dyd, &wd).unwrap();
        assert_eq!(g.shape(&dx), &[n, k]);
        check(
            &format!("linear_bwd_input {n}x{k}x{m}"),
            &down(&g, &dx).data,
            &cpu.linear_bwd_input(&dy, &w).unwrap().data,
            OP_TOL,
        );
        let regions = [
            Region::Full,
            Region::Rows {
                start: m / 3,
                len: (m / 2).max(1),
            },
            Region::Cols {
                start: k / 4,
                len: (k / 3).max(1),
            },
            Region::Rows {
                start: m - 1,
                len: 1,
            },
            Region::Cols {
                start: k - 1,
                len: 1,
            },
        ];
        for reg in regions {
            // Accumulate onto a nonzero buffer (param grads +=), twice.
            let start = rand_t(&mut r, &reg.shape(&[m, k]), 3.0);
            let mut want = start.clone();
            cpu.linear_bwd_weight(&dy, &x, reg, &mut want).unwrap();
            cpu.linear_bwd_weight(&dy, &x, reg, &mut want).unwrap();
            let mut got = g.upload(&start).unwrap();
            g.linear_bwd_weight(&dyd, &xd, reg, &mut got).unwrap();
            g.linear_bwd_weight(&dyd, &xd, reg, &mut got).unwrap();
            check(
                &format!("linear_bwd_weight {n}x{k}x{m} {reg:?} (+= twice)"),
                &down(&g, &got).data,
                &want.data,
                OP_TOL,
            );
        }
        // A buffer of the wrong size and a region outside the weight are errors.
        let mut bad = g.zeros(&[m, k + 1]).unwrap();
        assert!(g
            .linear_bwd_weight(&dyd, &xd, Region::Full, &mut bad)
            .is_err());
        let mut part = g.zeros(&[2, k]).unwrap();
        assert!(g
            .linear_bwd_weight(
                &dyd,
                &xd,
                Region::Rows {
                    start: m - 1,
                    len: 2
                },
                &mut part
            )
            .is_err());
    }
}

#[test]
#[ignore = "needs a GPU"]
fn rmsnorm_rope_swiglu_scale_copy_bwd_match_cpu() {
    let g = gpu("elementwise bwd");
    let cpu = CpuBackend;
    let mut r = rng(2);
    for (n, d) in [(1, 48), (7, 333), (33, 4100), (300, 64)] {
        let x = rand_t(&mut r, &[n, d], 2.0);
        let dy = rand_t(&mut r, &[n, d], 1.0);
        let w = rand_t(&mut r, &[d], 1.5);
        let dw0 = rand_t(&mut r, &[d], 2.0);
        let (xd, dyd, wd) = (
            g.upload(&x).unwrap(),
            g.upload(&dy).unwrap(),
            g.upload(&w).unwrap(),
        );
        let mut dw_want = dw0.clone();
        let dx_want = cpu
            .rmsnorm_bwd(&dy, &x, &w, 1e-5, Some(&mut dw_want))
            .unwrap();
        let mut dw = g.upload(&dw0).unwrap();
        let dx = g.rmsnorm_bwd(&dyd, &xd, &wd, 1e-5, Some(&mut dw)).unwrap();
        check(
            &format!("rmsnorm_bwd dx {n}x{d}"),
            &down(&g, &dx).data,
            &dx_want.data,
            OP_TOL,
        );
        check(
            &format!("rmsnorm_bwd dw {n}x{d} (+=)"),
            &down(&g, &dw).data,
            &dw_want.data,
            OP_TOL,
        );
        let dx2 = g.rmsnorm_bwd(&dyd, &xd, &wd, 1e-5, None).unwrap();
        check(
            &format!("rmsnorm_bwd dx (no dw) {n}x{d}"),
            &down(&g, &dx2).data,
            &dx_want.data,
            OP_TOL,
        );

        let gate = rand_t(&mut r, &[n, d], 4.0);
        let up = rand_t(&mut r, &[n, d], 2.0);
        let (dg_w, du_w) = cpu.swiglu_bwd(&dy, &gate, &up).unwrap();
        let (dg, du) = g
            .swiglu_bwd(&dyd, &g.upload(&gate).unwrap(), &g.upload(&up).unwrap())
            .unwrap();
        check(
            &format!("swiglu_bwd dgate {n}x{d}"),
            &down(&g, &dg).data,
            &dg_w.data,
            OP_TOL,
        );
        check(
            &format!("swiglu_bwd dup {n}x{d}"),
            &down(&g, &du).data,
            &du_w.data,
            OP_TOL,
        );

        // scale and copy: the copy is independent of the original.
        let mut s = g.copy(&xd).unwrap();
        g.scale(&mut s, -0.37).unwrap();
        let mut sw = x.clone();
        cpu.scale(&mut sw, -0.37).unwrap();
        check(
            &format!("scale {n}x{d}"),
            &down(&g, &s).data,
            &sw.data,
            OP_TOL,
        );
        assert_eq!(down(&g, &xd).data, x.data, "copy aliases its source");
    }
    for (n, heads, dh, theta) in [
        (5, 4, 8, 10000.0),
        (37, 3, 16, 10000.0),
        (19, 5, 64, 1e6),
        (3, 2, 128, 5e5),
    ] {
        let dxh = rand_t(&mut r, &[n, heads * dh], 1.0);
        let pos: Vec<usize> = (0..n).map(|_| r.gen_range(0..5000)).collect();
        let inv = pinpoint::backend::rope_inv_freq(dh, theta);
        let mut want = dxh.clone();
        cpu.rope_bwd(&mut want, dh, &pos, &inv).unwrap();
        let mut got = g.upload(&dxh).unwrap();
        g.rope_bwd(&mut got, dh, &pos, &inv).unwrap();
        check(
            &format!("rope_bwd {n}x{heads}x{dh}"),
            &down(&g, &got).data,
            &want.data,
            OP_TOL,
        );
        // rope_bwd undoes rope (up to bf16 rounding).
        let mut back = g.upload(&dxh).unwrap();
        g.rope(&mut back, dh, &pos, &inv).unwrap();
        g.rope_bwd(&mut back, dh, &pos, &inv).unwrap();
        check(
            &format!("rope then rope_bwd {n}x{heads}x{dh}"),
            &down(&g, &back).data,
            &dxh.data,
            OP_TOL,
        );
    }
}

#[test]
#[ignore = "needs a GPU"]
fn attention_bwd_matches_cpu_with_gqa_windows_and_packing() {
    let g = gpu("attention_bwd");
    let cpu = CpuBackend;
    let mut r = rng(3);
    // (H, G, D, window, span lengths); spans are packed with a one-row gap before each
    // (rows no span covers get zero gradients).
    type Case = (usize, usize, usize, Option<usize>, Vec<usize>);
    let cases: Vec<Case> = vec![
        (4, 4, 16, None, vec![7]),
        (6, 2, 64, None, vec![70, 3, 33]),
        (6, 2, 64, Some(5), vec![1, 5, 37]),
        (8, 2, 128, Some(33), vec![50, 1, 20]),
        (4, 1, 128, None, vec![45]),
        (9, 3, 8, Some(3), vec![10, 2]),
        (2, 2, 256, None, vec![9, 40]),
        (8, 8, 64, None, vec![130]),
        // More tensor-core shapes (head_dim 64 / 128): length 1 first, lengths around
        // tile edges, GQA with 3 and 4 heads per group, windows shorter and longer than a
        // tile, a window of 1 (dq = dk = 0).
        (9, 3, 64, None, vec![1, 64, 129, 65]),
        (8, 2, 64, Some(40), vec![130, 1, 66]),
        (4, 4, 128, None, vec![64, 17, 1]),
        (6, 2, 128, Some(70), vec![150, 2]),
        (2, 1, 64, Some(1), vec![70]),
    ];
    let mut tc_cases = 0;
    for (h, gq, d, window, lens) in cases {
        let mut spans = Vec::new();
        let mut row = 0;
        for &l in &lens {
            row += 1; // gap
            spans.push(SeqSpan {
                q_start: row,
                q_len: l,
                kv_start: row,
                pos0: 0,
                kv_new: None,
            });
            row += l;
        }
        let n = row + 1;
        let q = rand_t(&mut r, &[n, h * d], 2.0);
        let k = rand_t(&mut r, &[n, gq * d], 2.0);
        let v = rand_t(&mut r, &[n, gq * d], 1.0);
        let dz = rand_t(&mut r, &[n, h * d], 1.0);
        let shape = AttnShape {
            n_heads: h,
            n_kv_heads: gq,
            head_dim: d,
            window,
        };
        let (dqc, dkc, dvc) = cpu.attention_bwd(&dz, &q, &k, &v, &spans, shape).unwrap();
        let (qd, kd, vd, dzd) = (
            g.upload(&q).unwrap(),
            g.upload(&k).unwrap(),
            g.upload(&v).unwrap(),
            g.upload(&dz).unwrap(),
        );
        for kernels in [AttnKernels::Auto, AttnKernels::Simple] {
            let tc = kernels == AttnKernels::Auto && attn_bwd_tensor_cores(&spans, shape);
            if kernels == AttnKernels::Simple && !attn_bwd_tensor_cores(&spans, shape) {
                continue; // Auto already ran the CUDA-core kernels
            }
            tc_cases += usize::from(tc);
            let (dq, dk, dv) = g
                .attention_bwd_with(&dzd, &qd, &kd, &vd, &spans, shape, kernels)
                .unwrap();
            let path = if tc { "tc" } else { "simple" };
            let what = format!("attention_bwd[{path}] H{h} G{gq} D{d} w{window:?} lens{lens:?}");
            for (name, a, b) in [("dq", &dq, &dqc), ("dk", &dk, &dkc), ("dv", &dv, &dvc)] {
                let a = down(&g, a);
                assert_eq!(a.shape, b.shape, "{what} {name} shape");
                check(&format!("{what} {name}"), &a.data, &b.data, OP_TOL);
                // The gap rows are exactly zero.
                let w = a.shape[1];
                for s in &spans {
                    let gap = s.q_start - 1;
                    assert!(
                        a.data[gap * w..(gap + 1) * w].iter().all(|&x| x == 0.0),
                        "{what} {name}: gap row {gap} not zero"
                    );
                }
            }
        }
    }
    // 10 eligible shapes, 4 of them with windows narrower than a tile (1, 5, 33, 40).
    assert_eq!(tc_cases, 6, "cases that took the tensor-core kernels");
    // Cached layouts are refused with a readable error, not a wrong answer.
    let shape = AttnShape {
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 8,
        window: None,
    };
    let q = g.upload(&rand_t(&mut r, &[3, 16], 1.0)).unwrap();
    let kv = g.upload(&rand_t(&mut r, &[8, 16], 1.0)).unwrap();
    let cached = [SeqSpan {
        q_start: 0,
        q_len: 3,
        kv_start: 0,
        pos0: 4,
        kv_new: None,
    }];
    let e = g
        .attention_bwd(&q, &q, &kv, &kv, &cached, shape)
        .err()
        .expect("pos0 > 0 must be refused");
    assert!(e.to_string().contains("pos0"), "{e}");
}

#[test]
#[ignore = "needs a GPU"]
fn embed_bwd_and_xent_match_cpu() {
    let g = gpu("embed_bwd/xent");
    let cpu = CpuBackend;
    let mut r = rng(4);
    // Embedding: repeated ids add up, onto a nonzero table gradient.
    for (vocab, d, n) in [(131, 37, 29), (1000, 256, 300), (7, 5, 40)] {
        let dx = rand_t(&mut r, &[n, d], 1.0);
        let mut ids: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
        ids[n - 1] = ids[0];
        let t0 = rand_t(&mut r, &[vocab, d], 2.0);
        let mut want = t0.clone();
        cpu.embed_bwd(&dx, &ids, &mut want).unwrap();
        let mut got = g.upload(&t0).unwrap();
        g.embed_bwd(&g.upload(&dx).unwrap(), &ids, &mut got)
            .unwrap();
        let got = down(&g, &got);
        check(
            &format!("embed_bwd V{vocab} d{d} n{n}"),
            &got.data,
            &want.data,
            OP_TOL,
        );
        // Rows of ids that do not occur keep their exact bits.
        for id in 0..vocab {
            if !ids.contains(&(id as u32)) {
                assert_eq!(
                    got.data[id * d..(id + 1) * d],
                    t0.data[id * d..(id + 1) * d],
                    "embed_bwd touched row {id}"
                );
            }
        }
        let mut bad = g.zeros(&[vocab, d]).unwrap();
        assert!(g
            .embed_bwd(&g.upload(&dx).unwrap(), &vec![vocab as u32; n], &mut bad)
            .is_err());
    }
    // Cross-entropy: rows without target, awkward vocabularies, a scale.
    for (n, vocab, scale) in [(5, 11, 0.5f32), (9, 517, 1.0), (6, 32003, 0.125)] {
        let logits = rand_t(&mut r, &[n, vocab], 6.0);
        let tg: Vec<Option<u32>> = (0..n)
            .map(|i| (i % 3 != 1).then(|| r.gen_range(0..vocab as u32)))
            .collect();
        let (lw, dw) = cpu.xent_fwd_bwd(&logits, &tg, scale).unwrap();
        let (lg, dg) = g
            .xent_fwd_bwd(&g.upload(&logits).unwrap(), &tg, scale)
            .unwrap();
        let e = ((lg - lw) / lw).abs() as f32;
        eprintln!("xent loss n{n} V{vocab}: rel err {e:.2e}");
        assert!(e <= 1e-3, "xent loss {lg} vs {lw}");
        let dg = down(&g, &dg);
        check(
            &format!("xent dlogits n{n} V{vocab}"),
            &dg.data,
            &dw.data,
            OP_TOL,
        );
        for (i, t) in tg.iter().enumerate() {
            if t.is_none() {
                assert!(
                    dg.data[i * vocab..(i + 1) * vocab]
                        .iter()
                        .all(|&x| x == 0.0),
                    "xent: row {i} without target not zero"
                );
            }
        }
    }
    let l = g.upload(&rand_t(&mut r, &[2, 9], 1.0)).unwrap();
    assert!(g.xent_fwd_bwd(&l, &[Some(9), None], 1.0).is_err());
    assert!(g.xent_fwd_bwd(&l, &[Some(1)], 1.0).is_err());
}

fn bits(t: &HostTensor) -> Vec<u32> {
    t.data.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[ignore = "needs a GPU"]
fn read_and_write_region_touch_only_the_region() {
    let g = gpu("regions");
    let cpu = CpuBackend;
    let mut r = rng(5);
    let t = rand_t(&mut r, &[37, 53], 3.0);
    let regions = [
        Region::Full,
        Region::Rows { start: 0, len: 1 },
        Region::Rows { start: 11, len: 9 },
        Region::Rows { start: 36, len: 1 },
        Region::Cols { start: 0, len: 1 },
        Region::Cols { start: 17, len: 5 },
        Region::Cols { start: 52, len: 1 },
    ];
    for reg in regions {
        let td = g.upload(&t).unwrap();
        let got = g.read_region(&td, reg).unwrap();
        let want = cpu.read_region(&t, reg).unwrap();
        assert_eq!(got.shape, want.shape, "read_region {reg:?} shape");
        assert_eq!(bits(&got), bits(&want), "read_region {reg:?}");

        let src = rand_t(&mut r, &reg.shape(&t.shape), 5.0);
        let mut want = t.clone();
        cpu.write_region(&mut want, reg, &src).unwrap();
        let mut td = g.upload(&t).unwrap();
        g.write_region(&mut td, reg, &src).unwrap();
        // src is bf16-exact: every value, inside and outside, bit-identical.
        assert_eq!(bits(&down(&g, &td)), bits(&want), "write_region {reg:?}");
        eprintln!("write_region {reg:?}: outside bytes identical");
    }
    // 1-D tensors: Full only.
    let v = rand_t(&mut r, &[19], 1.0);
    let mut vd = g.upload(&v).unwrap();
    let src = rand_t(&mut r, &[19], 1.0);
    g.write_region(&mut vd, Region::Full, &src).unwrap();
    assert_eq!(bits(&g.read_region(&vd, Region::Full).unwrap()), bits(&src));
    assert!(g
        .write_region(&mut vd, Region::Rows { start: 0, len: 1 }, &src)
        .is_err());
    let mut td = g.upload(&t).unwrap();
    assert!(g
        .write_region(&mut td, Region::Cols { start: 50, len: 4 }, &src)
        .is_err());
    assert!(g
        .write_region(&mut td, Region::Rows { start: 0, len: 2 }, &src)
        .is_err());
}

#[test]
#[ignore = "needs a GPU"]
fn adamw_update_and_sum_squares_match_the_host_reference() {
    let g = gpu("adamw");
    let cpu = CpuBackend;
    let mut r = rng(6);
    let shape = [23, 41];
    let regions = [
        Region::Full,
        Region::Rows { start: 5, len: 7 },
        Region::Cols { start: 13, len: 9 },
        Region::Cols { start: 40, len: 1 },
    ];
    for reg in regions {
        let w0 = rand_t(&mut r, &shape, 1.0);
        let rs = reg.shape(&shape);
        let master0 = cpu.read_region(&w0, reg).unwrap();
        // The master is f32 (not bf16): perturb below bf16 resolution.
        let master0 = HostTensor::new(
            rs.clone(),
            master0
                .data
                .iter()
                .map(|&x| x + r.gen_range(-1e-3f32..1e-3))
                .collect(),
        );
        let mut host = ParamState::new(master0.data.clone());
        let mut st = g.opt_new(&master0).unwrap();
        let mut wd = g.upload(&w0).unwrap();
        let (lr, wdecay, b1, b2) = (3e-3f32, 0.1f32, 0.9f32, 0.999f32);
        for t in 1..=3 {
            let grad = rand_t(&mut r, &rs, 0.5);
            let a = AdamStep {
                beta1: b1,
                beta2: b2,
                eps: 1e-8,
                step_size: lr / (1.0 - b1.powi(t)),
                bc2_sqrt: (1.0 - b2.powi(t)).sqrt(),
                decay: 1.0 - lr * wdecay,
                clip: if t == 2 { 0.7 } else { 1.0 },
            };
            a.apply(&mut host, &grad.data);
            let gd = g.upload(&grad).unwrap();
            let ss = g.sum_squares(&gd).unwrap();
            let ss_want = cpu.sum_squares(&grad).unwrap();
            let e = ((ss - ss_want) / ss_want).abs() as f32;
            eprintln!("sum_squares {reg:?}: rel err {e:.2e}");
            assert!(e <= 1e-5, "sum_squares {ss} vs {ss_want}");
            g.adamw_update(&mut st, &gd, &mut wd, reg, &a).unwrap();
        }
        let got = g.opt_read(&st).unwrap();
        check(
            &format!("adamw master {reg:?}"),
            &got.master,
            &host.master,
            1e-5,
        );
        check(&format!("adamw m {reg:?}"), &got.m, &host.m, 1e-5);
        check(&format!("adamw v {reg:?}"), &got.v, &host.v, 1e-5);
        // w: the region holds the master rounded to bf16, outside keeps its exact bits.
        let mut want_w = w0.clone();
        cpu.write_region(
            &mut want_w,
            reg,
            &HostTensor::new(rs.clone(), got.master.iter().map(|&x| bf16r(x)).collect()),
        )
        .unwrap();
        assert_eq!(
            bits(&down(&g, &wd)),
            bits(&want_w),
            "adamw {reg:?}: weight bytes"
        );
        // opt_write / opt_read round trip.
        g.opt_write(&mut st, &host).unwrap();
        assert_eq!(g.opt_read(&st).unwrap(), host, "opt_write then opt_read");
        let short = ParamState::new(vec![0.0; 3]);
        assert!(g.opt_write(&mut st, &short).is_err());
        let wrong = g.zeros(&[3]).unwrap();
        let a = AdamStep {
            beta1: b1,
            beta2: b2,
            eps: 1e-8,
            step_size: lr,
            bc2_sqrt: 1.0,
            decay: 1.0,
            clip: 1.0,
        };
        assert!(g.adamw_update(&mut st, &wrong, &mut wd, reg, &a).is_err());
    }
    // A 1-D weight (a norm), Full.
    let w0 = rand_t(&mut r, &[77], 1.0);
    let grad = rand_t(&mut r, &[77], 1.0);
    let mut host = ParamState::new(w0.data.clone());
    let mut st = g.opt_new(&w0).unwrap();
    let mut wd = g.upload(&w0).unwrap();
    let a = AdamStep {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-6,
        step_size: 1e-2 / 0.1,
        bc2_sqrt: 0.05f32.sqrt(),
        decay: 1.0,
        clip: 1.0,
    };
    a.apply(&mut host, &grad.data);
    g.adamw_update(
        &mut st,
        &g.upload(&grad).unwrap(),
        &mut wd,
        Region::Full,
        &a,
    )
    .unwrap();
    check(
        "adamw master 1-D",
        &g.opt_read(&st).unwrap().master,
        &host.master,
        1e-5,
    );
}
