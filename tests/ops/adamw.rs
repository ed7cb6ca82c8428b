//! Masked AdamW on a region of a weight (the optimizer state in f32 on every device), and
//! the gradient's sum of squares.

use super::*;
use pinpoint::backend::{AdamStep, ParamState};
use pinpoint::model::HostTensor;

/// The f32 state on every device: f32 rounding only.
const STATE_TOL: f32 = 1e-5;

/// `torch.optim.AdamW` in f64, given the step's scalars: `g' = g clip;
/// m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
/// w = w decay - step_size m / (sqrt(v) / bc2_sqrt + eps)`.
fn adamw_ref(w: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f32], a: &AdamStep) {
    let f = |x: f32| x as f64;
    for i in 0..w.len() {
        let gi = f(g[i]) * f(a.clip);
        m[i] = f(a.beta1) * m[i] + (1.0 - f(a.beta1)) * gi;
        v[i] = f(a.beta2) * v[i] + (1.0 - f(a.beta2)) * gi * gi;
        let denom = v[i].sqrt() / f(a.bc2_sqrt) + f(a.eps);
        w[i] = w[i] * f(a.decay) - f(a.step_size) * m[i] / denom;
    }
}

fn step(t: i32, lr: f32, wdecay: f32, clip: f32) -> AdamStep {
    let (b1, b2) = (0.9f32, 0.999f32);
    AdamStep {
        beta1: b1,
        beta2: b2,
        eps: 1e-8,
        step_size: lr / (1.0 - b1.powi(t)),
        bc2_sqrt: (1.0 - b2.powi(t)).sqrt(),
        decay: 1.0 - lr * wdecay,
        clip,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Three steps (the second clipped) on regions of a matrix and on a 1-D weight: master and
/// moments against f64; the weight's region holds the master in the weight's dtype and
/// every other value keeps its bits; sum of squares against f64; the state's write/read
/// round trip; a state or gradient of the wrong size refused.
fn adamw_body<B: TrainBackend>(b: &B, _tol: f32) {
    let regions = [
        ([23, 41].as_slice(), Region::Full),
        (&[23, 41], Region::Rows { start: 5, len: 7 }),
        (&[23, 41], Region::Cols { start: 13, len: 9 }),
        (&[23, 41], Region::Cols { start: 40, len: 1 }),
        (&[77], Region::Full),
    ];
    for (case, (shape, reg)) in regions.into_iter().enumerate() {
        let s = 10 * case as u64;
        let what = format!("adamw {shape:?} {reg:?}");
        let w0 = rand_t(s + 80, shape, 1.0);
        let rs = reg.shape(shape);
        // The master is f32 (not bf16): perturbed below bf16 resolution.
        let mut r = rand::rngs::StdRng::seed_from_u64(s + 81);
        let master0: Vec<f32> = region(&w0.data, shape, reg)
            .iter()
            .map(|&x| x + r.gen_range(-1e-3f32..1e-3))
            .collect();
        let mut want = master0.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (mut m, mut v) = (vec![0.0; want.len()], vec![0.0; want.len()]);
        let mut st = b.opt_new(&HostTensor::new(rs.clone(), master0)).unwrap();
        let mut wt = up(b, &w0);
        for t in 1..=3 {
            let grad = rand_t(s + 81 + t as u64, &rs, 0.5);
            let a = step(t, 3e-3, 0.1, if t == 2 { 0.7 } else { 1.0 });
            adamw_ref(&mut want, &mut m, &mut v, &grad.data, &a);
            let gt = up(b, &grad);
            let ss = b.sum_squares(&gt).unwrap();
            let ss_want: f64 = grad.data.iter().map(|&x| (x as f64).powi(2)).sum();
            let e = ((ss - ss_want) / ss_want).abs() as f32;
            eprintln!("{what} sum_squares: rel err {e:.2e}");
            assert!(e <= 1e-5, "{what} sum_squares {ss} vs {ss_want}");
            b.adamw_update(&mut st, &gt, &mut wt, reg, &a).unwrap();
        }
        let got = b.opt_read(&st).unwrap();
        check(
            &format!("{what} master"),
            &got.master,
            &f32s(&want),
            STATE_TOL,
        );
        check(&format!("{what} m"), &got.m, &f32s(&m), STATE_TOL);
        check(&format!("{what} v"), &got.v, &f32s(&v), STATE_TOL);
        // The weight: the region holds the master rounded as the device stores weights
        // (its own upload), every value outside keeps its bits.
        let stored = run(b, &up(b, &HostTensor::new(rs.clone(), got.master.clone())));
        let w = run(b, &wt);
        assert_eq!(
            bits(&region(&w, shape, reg)),
            bits(&stored),
            "{what}: region"
        );
        let mut outside = (w.clone(), w0.data.clone());
        for o in [&mut outside.0, &mut outside.1] {
            let idx: Vec<usize> = (0..o.len()).collect();
            for i in region(&idx, shape, reg) {
                o[i] = 0.0;
            }
        }
        assert_eq!(
            bits(&outside.0),
            bits(&outside.1),
            "{what}: outside the region"
        );
        // opt_write / opt_read round trip; wrong sizes refused.
        let host = ParamState {
            master: f32s(&want),
            m: f32s(&m),
            v: f32s(&v),
        };
        b.opt_write(&mut st, &host).unwrap();
        assert_eq!(
            b.opt_read(&st).unwrap(),
            host,
            "{what}: opt_write then opt_read"
        );
        assert!(b
            .opt_write(&mut st, &ParamState::new(vec![0.0; 3]))
            .is_err());
        let wrong = b.zeros(&[3]).unwrap();
        assert!(b
            .adamw_update(&mut st, &wrong, &mut wt, reg, &step(1, 1e-3, 0.0, 1.0))
            .is_err());
    }
}
test_device!(adamw_body, adamw_cpu, adamw_cuda);
