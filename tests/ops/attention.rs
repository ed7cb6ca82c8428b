//! Causal grouped-query attention, forward (output and probabilities) and backward: GQA,
//! sliding windows (1 included), packed sequences, cache layouts.

use super::*;
use pinpoint::backend::{AttnShape, Pattern, SeqSpan};
use pinpoint::model::HostTensor;

/// The kernels a device can run attention with, so that a body runs every one: the CPU
/// has one; CUDA has the tensor-core kernels (where `Auto` takes them) and the CUDA-core
/// ones (`Simple`), and its backward takes whole packed sequences only. `t` is
/// `[q, k, v, dz]` on the device.
trait AttnDevice: TrainBackend {
    /// Names of the kernel sets that apply to the forward (backward) of a case.
    fn paths(&self, _c: &Case, _bwd: bool) -> Vec<&'static str> {
        vec!["cpu"]
    }
    /// The backward of a cache layout (pos0 > 0) is computed, not refused.
    const BWD_CACHED: bool = true;
    /// `z` and the patterns of `want`, with the kernels of `path`.
    fn fwd(
        &self,
        _path: &str,
        t: &[Self::Tensor; 4],
        c: &Case,
        want: &[(usize, usize)],
    ) -> Fwd<Self> {
        self.attention(&t[0], &t[1], &t[2], &c.spans, c.shape, want)
            .unwrap()
    }
    /// `(dq, dk, dv)`, with the kernels of `path`.
    fn bwd(&self, _path: &str, t: &[Self::Tensor; 4], c: &Case) -> Bwd<Self> {
        self.attention_bwd(&t[3], &t[0], &t[1], &t[2], &c.spans, c.shape)
            .unwrap()
    }
}

type Fwd<B> = (<B as pinpoint::backend::Backend>::Tensor, Vec<Pattern>);
type Bwd<B> = (
    <B as pinpoint::backend::Backend>::Tensor,
    <B as pinpoint::backend::Backend>::Tensor,
    <B as pinpoint::backend::Backend>::Tensor,
);

impl AttnDevice for pinpoint::backend::cpu::CpuBackend {}

#[cfg(feature = "cuda")]
mod cuda_paths {
    use super::*;
    use pinpoint::backend::cuda::{
        attn_bwd_tensor_cores, attn_tensor_cores, AttnKernels, CudaBackend, CudaTensor,
    };

    fn kernels(path: &str) -> AttnKernels {
        match path {
            "tc" => AttnKernels::Auto,
            _ => AttnKernels::Simple,
        }
    }

    impl AttnDevice for CudaBackend {
        fn paths(&self, c: &Case, bwd: bool) -> Vec<&'static str> {
            let tc = match bwd {
                false => attn_tensor_cores(&c.spans, c.shape),
                true => attn_bwd_tensor_cores(&c.spans, c.shape),
            };
            if tc {
                vec!["tc", "simple"]
            } else {
                vec!["simple"]
            }
        }
        const BWD_CACHED: bool = false;
        fn fwd(
            &self,
            path: &str,
            t: &[CudaTensor; 4],
            c: &Case,
            want: &[(usize, usize)],
        ) -> Fwd<Self> {
            let (q, k, v) = (&t[0], &t[1], &t[2]);
            self.attention_with(q, k, v, &c.spans, c.shape, want, kernels(path))
                .unwrap()
        }
        fn bwd(&self, path: &str, t: &[CudaTensor; 4], c: &Case) -> Bwd<Self> {
            let (q, k, v, dz) = (&t[0], &t[1], &t[2], &t[3]);
            self.attention_bwd_with(dz, q, k, v, &c.spans, c.shape, kernels(path))
                .unwrap()
        }
    }

    /// Which of the bodies' cases the tensor-core kernels take, and the routing of narrow
    /// windows: the tensor-core backward gave a wrong dq for a sliding window of 1 on an
    /// H100 (2026-11-27, cause not found), so windows narrower than a tile go to the
    /// CUDA-core backward. Pinned here (no device needed) until the kernel is fixed and a
    /// GPU run shows it.
    #[test]
    fn tensor_core_routing_keeps_narrow_windows_off_the_backward() {
        let fwd = fwd_cases();
        let bwd = bwd_cases();
        let tc = |cases: &[Case], f: fn(&[SeqSpan], AttnShape) -> bool| {
            cases.iter().filter(|c| f(&c.spans, c.shape)).count()
        };
        assert_eq!(
            tc(&fwd, attn_tensor_cores),
            7,
            "forward cases on tensor cores"
        );
        // 10 eligible shapes, 4 of them with windows narrower than a tile (1, 5, 33, 40).
        assert_eq!(tc(&bwd, attn_tensor_cores), 10, "backward cases eligible");
        assert_eq!(
            tc(&bwd, attn_bwd_tensor_cores),
            6,
            "backward cases on tensor cores"
        );
        let case = |window| packed(4, 2, 64, window, &[100], false);
        assert!(attn_tensor_cores(&case(Some(1)).spans, case(Some(1)).shape));
        for w in [1, 5, 33, 63] {
            let c = case(Some(w));
            assert!(!attn_bwd_tensor_cores(&c.spans, c.shape), "window {w}");
        }
        for w in [Some(64), Some(4096), None] {
            let c = case(w);
            assert!(attn_bwd_tensor_cores(&c.spans, c.shape), "window {w:?}");
        }
    }
}

/// One attention call's layout.
struct Case {
    shape: AttnShape,
    spans: Vec<SeqSpan>,
    /// Query rows and key/value rows.
    n: usize,
    kv_rows: usize,
}

fn attn_shape(h: usize, g: usize, d: usize, window: Option<usize>) -> AttnShape {
    AttnShape {
        n_heads: h,
        n_kv_heads: g,
        head_dim: d,
        window,
    }
}

/// Sequences of `lens` packed in one batch (keys in the query rows), with a row no span
/// covers before each when `gaps` (its gradients must be zero).
fn packed(h: usize, g: usize, d: usize, window: Option<usize>, lens: &[usize], gaps: bool) -> Case {
    let mut spans = Vec::new();
    let mut row = 0;
    for &l in lens {
        row += usize::from(gaps);
        spans.push(SeqSpan {
            q_start: row,
            q_len: l,
            kv_start: row,
            pos0: 0,
            kv_new: None,
        });
        row += l;
    }
    let n = row + usize::from(gaps);
    Case {
        shape: attn_shape(h, g, d, window),
        spans,
        n,
        kv_rows: n,
    }
}

/// Sequences continuing a cache: sequence i's keys at rows `i * capacity ..`, its queries
/// at positions `pos0s[i] ..`.
fn cached(
    h: usize,
    g: usize,
    d: usize,
    window: Option<usize>,
    lens: &[usize],
    pos0s: &[usize],
) -> Case {
    let capacity = lens.iter().zip(pos0s).map(|(l, p)| l + p).max().unwrap() + 3;
    let mut spans = Vec::new();
    let mut q_start = 0;
    for (i, (&l, &p)) in lens.iter().zip(pos0s).enumerate() {
        spans.push(SeqSpan {
            q_start,
            q_len: l,
            kv_start: i * capacity,
            pos0: p,
            kv_new: None,
        });
        q_start += l;
    }
    Case {
        shape: attn_shape(h, g, d, window),
        spans,
        n: q_start,
        kv_rows: lens.len() * capacity,
    }
}

/// 40 fresh queries, then 20 queries at positions 10..30 whose own keys are in rows 40..60
/// and whose cached prefix (positions 0..10) is in rows 60..70 (`kv_new`). Spans of >= 16
/// queries and several query blocks (the CPU's blocked AVX-512 kernels).
fn prefix_case(window: Option<usize>) -> Case {
    let span = |q_start, q_len, kv_start, pos0, kv_new| SeqSpan {
        q_start,
        q_len,
        kv_start,
        pos0,
        kv_new,
    };
    Case {
        shape: attn_shape(6, 2, 24, window),
        spans: vec![span(0, 40, 0, 0, None), span(40, 20, 60, 10, Some(40))],
        n: 60,
        kv_rows: 70,
    }
}

/// Forward cases: MHA and GQA, windows, cache layouts, head dims 8 to 256; the tensor-core
/// shapes (whole packed sequences, head_dim 64 / 128) with unequal lengths, not multiples
/// of 64, length 1, windows shorter and longer than a tile, a window of 1.
fn fwd_cases() -> Vec<Case> {
    vec![
        packed(4, 4, 16, None, &[7], false),
        packed(8, 2, 8, Some(5), &[1, 5, 37], false),
        packed(6, 2, 64, None, &[70, 3], false),
        packed(4, 1, 128, Some(33), &[50, 1], false),
        cached(9, 3, 64, None, &[1, 1, 2], &[40, 7, 0]),
        cached(8, 2, 8, Some(5), &[1, 3], &[12, 2]),
        packed(2, 2, 256, None, &[9], false),
        packed(9, 3, 64, None, &[1, 70, 130, 64], false),
        packed(8, 2, 64, Some(40), &[129, 1, 65], false),
        packed(4, 4, 128, None, &[64, 17, 1], false),
        packed(6, 1, 128, Some(70), &[150, 2], false),
        packed(2, 1, 64, Some(1), &[70], false),
        // head_dim 64 but a cache layout: the CUDA-core kernels.
        cached(4, 2, 64, Some(40), &[3, 66], &[70, 5]),
        prefix_case(None),
        prefix_case(Some(13)),
    ]
}

/// Backward cases, packed with a gap row before each sequence; the tensor-core shapes with
/// length 1 first, lengths around tile edges, 3 and 4 query heads per group, windows
/// shorter and longer than a tile, a window of 1 (dq = dk = 0).
fn bwd_cases() -> Vec<Case> {
    let p = |h, g, d, window, lens: &[usize]| packed(h, g, d, window, lens, true);
    vec![
        p(4, 4, 16, None, &[7]),
        p(6, 2, 64, None, &[70, 3, 33]),
        p(6, 2, 64, Some(5), &[1, 5, 37]),
        p(8, 2, 128, Some(33), &[50, 1, 20]),
        p(4, 1, 128, None, &[45]),
        p(9, 3, 8, Some(3), &[10, 2]),
        p(2, 2, 256, None, &[9, 40]),
        p(8, 8, 64, None, &[130]),
        p(9, 3, 64, None, &[1, 64, 129, 65]),
        p(8, 2, 64, Some(40), &[130, 1, 66]),
        p(4, 4, 128, None, &[64, 17, 1]),
        p(6, 2, 128, Some(70), &[150, 2]),
        p(2, 1, 64, Some(1), &[70]),
    ]
}

/// The f64 reference of one call: `z`, the probabilities of the `(seq, head)` pairs asked
/// for (`[q_len, pos0 + q_len]`, masked entries 0), and `dq`, `dk`, `dv` for `dz`.
struct Ref {
    z: Vec<f64>,
    probs: Vec<Vec<f64>>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// Attention in f64, one query row at a time: query row `q_start + i` at position
/// `pos0 + i` sees the keys of positions `j <= pos0 + i` with `pos0 + i - j < window`.
fn attn_ref(q: &[f64], k: &[f64], v: &[f64], dz: &[f64], c: &Case, want: &[(usize, usize)]) -> Ref {
    let sh = c.shape;
    let dh = sh.head_dim;
    let (qc, kc) = (sh.n_heads * dh, sh.n_kv_heads * dh);
    let group = sh.n_heads / sh.n_kv_heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut r = Ref {
        z: vec![0.0; c.n * qc],
        probs: want
            .iter()
            .map(|&(s, _)| vec![0.0; c.spans[s].q_len * (c.spans[s].pos0 + c.spans[s].q_len)])
            .collect(),
        dq: vec![0.0; c.n * qc],
        dk: vec![0.0; c.kv_rows * kc],
        dv: vec![0.0; c.kv_rows * kc],
    };
    for (si, s) in c.spans.iter().enumerate() {
        for h in 0..sh.n_heads {
            let g = h / group;
            let kv = |j: usize| s.kv_row(j) * kc + g * dh;
            for i in 0..s.q_len {
                let pos = s.pos0 + i;
                let qi = (s.q_start + i) * qc + h * dh;
                let lo = sh.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let keys: Vec<usize> = (lo..=pos).collect();
                let dotp = |a: &[f64], ai: usize, j: usize| -> f64 {
                    (0..dh).map(|x| a[ai + x] * k[kv(j) + x]).sum()
                };
                let sc: Vec<f64> = keys.iter().map(|&j| dotp(q, qi, j) * scale).collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                let dp: Vec<f64> = keys
                    .iter()
                    .map(|&j| (0..dh).map(|x| dz[qi + x] * v[kv(j) + x]).sum())
                    .collect();
                let pdp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (jj, &j) in keys.iter().enumerate() {
                    let ds = p[jj] * (dp[jj] - pdp) * scale;
                    for x in 0..dh {
                        r.z[qi + x] += p[jj] * v[kv(j) + x];
                        r.dq[qi + x] += ds * k[kv(j) + x];
                        r.dk[kv(j) + x] += ds * q[qi + x];
                        r.dv[kv(j) + x] += p[jj] * dz[qi + x];
                    }
                }
                for (wi, _) in want.iter().enumerate().filter(|(_, &w)| w == (si, h)) {
                    let kv_len = s.pos0 + s.q_len;
                    for (jj, &j) in keys.iter().enumerate() {
                        r.probs[wi][i * kv_len + j] = p[jj];
                    }
                }
            }
        }
    }
    r
}

/// Random q, k, v, dz of a case (bf16-exact).
fn inputs(c: &Case, seed: u64) -> [HostTensor; 4] {
    let (qc, kc) = (
        c.shape.n_heads * c.shape.head_dim,
        c.shape.n_kv_heads * c.shape.head_dim,
    );
    [
        rand_t(seed, &[c.n, qc], 2.0),
        rand_t(seed + 1, &[c.kv_rows, kc], 2.0),
        rand_t(seed + 2, &[c.kv_rows, kc], 1.0),
        rand_t(seed + 3, &[c.n, qc], 1.0),
    ]
}

fn describe(c: &Case) -> String {
    let s = c.shape;
    let lens: Vec<usize> = c.spans.iter().map(|s| s.q_len).collect();
    let pos0: Vec<usize> = c.spans.iter().map(|s| s.pos0).collect();
    format!(
        "H{} G{} D{} w{:?} lens{lens:?} pos0{pos0:?}",
        s.n_heads, s.n_kv_heads, s.head_dim, s.window
    )
}

/// The forward: z, and the probabilities of one head per sequence (masked entries exactly
/// zero, rows summing to one through the reference), on every kernel set of the device.
fn attention_body<B: AttnDevice>(b: &B, tol: f32) {
    for (ci, c) in fwd_cases().iter().enumerate() {
        let [q, k, v, dz] = inputs(c, 100 * ci as u64);
        // Asked for last sequence first; returned in (seq, head) order.
        let want: Vec<(usize, usize)> = (0..c.spans.len())
            .map(|s| (s, (s * 5 + 1) % c.shape.n_heads))
            .collect();
        let asked: Vec<(usize, usize)> = want.iter().rev().copied().collect();
        let r = attn_ref(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&dz), c, &want);
        let t = [&q, &k, &v, &dz].map(|x| up(b, x));
        for path in b.paths(c, false) {
            let what = format!("attention[{path}] {}", describe(c));
            let (z, pats) = b.fwd(path, &t, c, &asked);
            check(&format!("{what} z"), &run(b, &z), &f32s(&r.z), tol);
            let got: Vec<(usize, usize)> = pats.iter().map(|p| (p.seq, p.head)).collect();
            assert_eq!(got, want, "{what}: patterns");
            for ((p, want_p), &(s, h)) in pats.iter().zip(&r.probs).zip(&want) {
                let sp = c.spans[s];
                assert_eq!(p.probs.shape, [sp.q_len, sp.pos0 + sp.q_len], "{what}");
                check(
                    &format!("{what} probs s{s} h{h}"),
                    &p.probs.data,
                    &f32s(want_p),
                    tol,
                );
                for (x, y) in p.probs.data.iter().zip(want_p) {
                    assert_eq!(*x == 0.0, *y == 0.0, "{what}: mask differs");
                }
            }
        }
    }
}
test_device!(attention_body, attention_cpu, attention_cuda);

/// The backward on every kernel set of the device (rows no span covers get exactly zero
/// gradients); a cache layout is computed or refused with a readable error. The reference
/// backward against finite differences of the reference forward, GQA with a window and
/// MHA without.
fn attention_bwd_body<B: AttnDevice>(b: &B, tol: f32) {
    for (ci, c) in bwd_cases().iter().enumerate() {
        let [q, k, v, dz] = inputs(c, 100 * ci as u64 + 7);
        let [qf, kf, vf, dzf] = [&q, &k, &v, &dz].map(f64s);
        let r = attn_ref(&qf, &kf, &vf, &dzf, c, &[]);
        if ci == 0 || ci == 5 {
            let z = |q: &[f64], k: &[f64], v: &[f64]| dot(&dzf, &attn_ref(q, k, v, &dzf, c, &[]).z);
            let what = describe(c);
            fd_check(
                &format!("attention ref dq {what}"),
                &|x| z(x, &kf, &vf),
                &qf,
                &r.dq,
            );
            fd_check(
                &format!("attention ref dk {what}"),
                &|x| z(&qf, x, &vf),
                &kf,
                &r.dk,
            );
            fd_check(
                &format!("attention ref dv {what}"),
                &|x| z(&qf, &kf, x),
                &vf,
                &r.dv,
            );
        }
        let t = [&q, &k, &v, &dz].map(|x| up(b, x));
        for path in b.paths(c, true) {
            let what = format!("attention_bwd[{path}] {}", describe(c));
            let (dq, dk, dv) = b.bwd(path, &t, c);
            for (name, t, want) in [("dq", &dq, &r.dq), ("dk", &dk, &r.dk), ("dv", &dv, &r.dv)] {
                let got = b.download(t).unwrap();
                let w = got.shape[1];
                assert_eq!(got.shape[0] * w, want.len(), "{what} {name} shape");
                check(&format!("{what} {name}"), &got.data, &f32s(want), tol);
                for s in &c.spans {
                    let gap = s.q_start - 1;
                    assert!(
                        got.data[gap * w..(gap + 1) * w].iter().all(|&x| x == 0.0),
                        "{what} {name}: gap row {gap} not zero"
                    );
                }
            }
        }
    }
    for window in [None, Some(13)] {
        let c = prefix_case(window);
        let [q, k, v, dz] = inputs(&c, 9000);
        let (qt, kt, vt, dzt) = (up(b, &q), up(b, &k), up(b, &v), up(b, &dz));
        let what = format!("attention_bwd {} (cache layout)", describe(&c));
        match b.attention_bwd(&dzt, &qt, &kt, &vt, &c.spans, c.shape) {
            Ok((dq, dk, dv)) => {
                assert!(B::BWD_CACHED, "{what}: computed where it should be refused");
                let r = attn_ref(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&dz), &c, &[]);
                check(&format!("{what} dq"), &run(b, &dq), &f32s(&r.dq), tol);
                check(&format!("{what} dk"), &run(b, &dk), &f32s(&r.dk), tol);
                check(&format!("{what} dv"), &run(b, &dv), &f32s(&r.dv), tol);
            }
            Err(e) => {
                assert!(!B::BWD_CACHED, "{what}: {e}");
                assert!(e.to_string().contains("pos0"), "{what}: {e}");
            }
        }
    }
}
test_device!(
    attention_bwd_body,
    attention_bwd_cpu,
    attention_bwd_cuda,
    2e-2
);
