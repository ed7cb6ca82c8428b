//! Gradients: loss and every weight gradient against torch autograd (fixtures written by
//! scripts/make_fixtures.py), finite differences of the whole model, and restricted-region
//! weight gradients against the rows/columns of the full gradient. Each backward op
//! against an f64 reference (itself checked by finite differences) is in tests/ops/.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::{Region, TrainBackend};
use pinpoint::heads::HeadId;
use pinpoint::model::HostTensor;
use pinpoint::train::{self, Grads, TrainSeq};
use pinpoint::tune::mask::{HeadProjs, LayerParam, Mask, ParamId, Slice};
use pinpoint::Model;
use rand::{Rng, SeedableRng};

const MODELS: &[&str] = common::TINY_MODELS;

fn load(name: &str) -> (Model<CpuBackend>, std::collections::HashMap<String, Ref>) {
    let dir = fixture(name);
    let m = Model::load_cpu(&dir).expect("load fixture model");
    let refs = read_refs(&dir.join("expected.safetensors"));
    (m, refs)
}

fn batch(r: &std::collections::HashMap<String, Ref>) -> Vec<TrainSeq> {
    let ids = id_rows(&r["input_ids"]);
    let t = ids[0].len();
    ids.iter()
        .enumerate()
        .map(|(i, s)| TrainSeq::from_hf_labels(s, &r["labels"].ints[i * t..(i + 1) * t]))
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let d = max_abs_diff(a, b);
    let m = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    d / m.max(1e-30)
}

fn mean_grads(m: &Model<CpuBackend>, mask: &Mask, seqs: &[TrainSeq]) -> (f64, Grads<HostTensor>) {
    let n: usize = seqs.iter().map(|s| s.n_targets()).sum();
    let mut g = Grads::zeros(m, mask, &[]).unwrap();
    let (loss, n2) = train::loss_and_grads(m, &[], mask, seqs, 1.0 / n as f32, &mut g).unwrap();
    assert_eq!(n, n2);
    (loss / n as f64, g)
}

#[test]
fn loss_and_every_gradient_match_torch() {
    for name in MODELS {
        let (m, r) = load(name);
        let seqs = batch(&r);
        let mask = Mask::all(&m.cfg, m.weights.lm_head.is_none());
        let (loss, g) = mean_grads(&m, &mask, &seqs);
        let want = r["loss"].data[0];
        assert!(
            ((loss as f32 - want) / want).abs() <= 1e-5,
            "{name}: loss {loss} vs torch {want}"
        );
        let mut seen = 0;
        for (s, gt) in mask.slices.iter().zip(&g.slices) {
            assert_eq!(s.region, Region::Full);
            let key = format!("grad.{}", s.param.hf_name());
            let refg = r
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: fixture lacks {key}"));
            // Biases are held as [1, out] rows; HF's are [out].
            let shape: Vec<usize> = match gt.shape.as_slice() {
                [1, n] if key.ends_with(".bias") => vec![*n],
                s => s.to_vec(),
            };
            assert_eq!(shape, refg.shape, "{name}: {key} shape");
            let e = rel_err(&gt.data, &refg.data);
            assert!(e <= 1e-4, "{name}: {key} relative error {e:e}");
            seen += 1;
        }
        // Every fixture gradient is compared (Qwen2's q/k/v biases too).
        let n_ref = r.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(seen, n_ref, "{name}: every fixture gradient compared");
    }
}

#[test]
fn restricted_region_gradients_equal_slices_of_the_full_gradient() {
    for name in MODELS {
        let (m, r) = load(name);
        let seqs = batch(&r);
        let cfg = &m.cfg;
        let full = Mask::all(cfg, m.weights.lm_head.is_none());
        let (_, gf) = mean_grads(&m, &full, &seqs);
        let heads = [HeadId::new(0, 1), HeadId::new(2, 3), HeadId::new(2, 0)];
        // With the heads' bias slices where the model has biases (Qwen2).
        let projs = HeadProjs {
            q: true,
            k: true,
            v: true,
            o: true,
            bias: cfg.qkv_bias,
        };
        let mut mask = Mask::heads(cfg, &heads, projs).unwrap();
        // Also rows of an MLP matrix and columns of down_proj.
        mask = mask
            .union(
                &Mask::from_slices(
                    cfg,
                    vec![
                        Slice {
                            param: ParamId::Layer(1, LayerParam::Gate),
                            region: Region::Rows { start: 3, len: 5 },
                        },
                        Slice {
                            param: ParamId::Layer(1, LayerParam::Down),
                            region: Region::Cols { start: 7, len: 4 },
                        },
                    ],
                )
                .unwrap(),
                cfg,
            )
            .unwrap();
        let (_, g) = mean_grads(&m, &mask, &seqs);
        for (s, gt) in mask.slices.iter().zip(&g.slices) {
            let fi = full.slices.iter().position(|f| f.param == s.param).unwrap();
            let want = CpuBackend.read_region(&gf.slices[fi], s.region).unwrap();
            assert_eq!(gt.shape, want.shape, "{name}: {s}");
            let e = rel_err(&gt.data, &want.data);
            assert!(
                e <= 1e-5,
                "{name}: {s} relative error {e:e} vs the full gradient"
            );
            assert!(
                want.data.iter().any(|&x| x != 0.0),
                "{name}: {s} has a zero gradient"
            );
        }
    }
}

/// Central difference of `f` at coordinate i of `x` (f32, step `eps`).
fn fd(f: &dyn Fn(&HostTensor) -> f64, x: &HostTensor, i: usize, eps: f32) -> f64 {
    let mut p = x.clone();
    p.data[i] += eps;
    let fp = f(&p);
    p.data[i] = x.data[i] - eps;
    let fm = f(&p);
    (fp - fm) / (2.0 * (eps as f64))
}

fn rand_t(rng: &mut rand::rngs::StdRng, shape: Vec<usize>, s: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(shape, (0..n).map(|_| rng.gen_range(-s..s)).collect())
}

/// Check analytic `g` = d f / d x against central differences at a few coordinates
/// (the largest-|g| ones and random ones).
fn check(
    what: &str,
    f: &dyn Fn(&HostTensor) -> f64,
    x: &HostTensor,
    g: &HostTensor,
    rng: &mut rand::rngs::StdRng,
) {
    assert_eq!(x.shape, g.shape, "{what}: gradient shape");
    let mut idx: Vec<usize> = (0..x.numel()).collect();
    idx.sort_by(|&a, &b| g.data[b].abs().total_cmp(&g.data[a].abs()));
    let mut pick: Vec<usize> = idx[..3.min(idx.len())].to_vec();
    for _ in 0..3 {
        pick.push(rng.gen_range(0..x.numel()));
    }
    let gmax = g.data.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    assert!(gmax > 0.0, "{what}: zero gradient");
    for i in pick {
        let num = fd(f, x, i, 1e-2);
        let ana = g.data[i] as f64;
        let err = (num - ana).abs();
        assert!(
            err <= 2e-2 * ana.abs() + 2e-3 * gmax,
            "{what}[{i}]: analytic {ana:e} vs finite difference {num:e}"
        );
    }
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    // Sequences of different lengths (the second longer than the window) in one batch.
    for name in MODELS {
        let (mut m, r) = load(name);
        let mut seqs = batch(&r);
        seqs[1].ids.truncate(8);
        seqs[1].targets.truncate(8);
        seqs[1].targets[7] = None;
        let mask = Mask::all(&m.cfg, m.weights.lm_head.is_none());
        let (_, g) = mean_grads(&m, &mask, &seqs);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (si, s) in mask.slices.clone().iter().enumerate() {
            // A few parameters: every kind once (layer 1 and the globals).
            let keep = match s.param {
                ParamId::Layer(l, _) => l == 1,
                _ => true,
            };
            if !keep {
                continue;
            }
            let x = pinpoint::tune::mask::param(&m.weights, s.param)
                .unwrap()
                .clone();
            let gt = g.slices[si].clone();
            let mm = std::cell::RefCell::new(&mut m);
            let f = |w: &HostTensor| {
                let mut mb = mm.borrow_mut();
                *pinpoint::tune::mask::param_mut(&mut mb.weights, s.param).unwrap() = w.clone();
                let (l, n) = train::loss(&mb, &[], &seqs).unwrap();
                l / n as f64
            };
            check(&format!("{name} {}", s.param), &f, &x, &gt, &mut rng);
            *pinpoint::tune::mask::param_mut(&mut mm.borrow_mut().weights, s.param).unwrap() = x;
        }
    }
}

#[test]
fn attribution_backward_to_z_matches_finite_differences() {
    let (m, r) = load("tiny-mistral");
    let ids = id_rows(&r["input_ids"]);
    let v = m.cfg.vocab_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let dl = rand_t(&mut rng, vec![2, v], 1.0);
    let dz = train::backward_to_z(&m, &ids, &dl).unwrap();
    assert_eq!(dz.len(), m.n_layers());
    // f(z_l) via a patched forward: perturb z of layer l at one (seq, pos, col).
    use pinpoint::heads::{HookPoint, Positions, Taps};
    let base = m
        .forward(
            &ids,
            &Taps::new().capture_all_z(m.n_layers(), Positions::All),
        )
        .unwrap();
    let d = m.head_dim();
    for l in [0usize, 2] {
        let z = base.z(l).unwrap();
        let width = z.width();
        let gz = &dz[l];
        assert_eq!(gz.shape, vec![22, width]);
        for &(row, col) in &[(3usize, 5usize), (10, 60), (15, 17), (21, 33)] {
            let (seq, pos) = z.index[row];
            let h = col / d;
            let f = |delta: f32| {
                let mut vals = z.row_at(row)[h * d..(h + 1) * d].to_vec();
                vals[col % d] += delta;
                let out = m
                    .forward(
                        &ids,
                        &Taps::new().patch_z(HeadId::new(l, h), d, seq, pos, vals),
                    )
                    .unwrap();
                (0..2)
                    .map(|s| {
                        let lg = out.logits.last_of(s).unwrap();
                        lg.iter()
                            .zip(&dl.data[s * v..(s + 1) * v])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            };
            let num = (f(1e-2) - f(-1e-2)) / 2e-2;
            let ana = gz.data[row * width + col] as f64;
            assert!(
                (num - ana).abs() <= 2e-2 * ana.abs() + 2e-3,
                "dz layer {l} row {row} col {col}: {ana} vs {num}"
            );
        }
        let _ = HookPoint::Z(l);
    }
}

/// Recomputing a layer's activations from its input residual during backward (to fit a
/// memory budget) must give exactly the gradients of keeping them: the same ops in the
/// same order, so the same bits. Checked for all-kept vs all-recomputed vs a budget that
/// keeps only the top layer, on the full mask and on a head mask (backward stops early).
#[test]
fn recomputed_activations_give_bit_identical_gradients() {
    use pinpoint::train::ActMemory;
    for name in MODELS {
        let (m, r) = load(name);
        let seqs = batch(&r);
        let n: usize = seqs.iter().map(|s| s.n_targets()).sum();
        let heads = [HeadId { layer: 1, head: 0 }];
        let masks = [
            Mask::all(&m.cfg, m.weights.lm_head.is_none()),
            Mask::heads(&m.cfg, &heads, HeadProjs::default_for(&m.cfg)).unwrap(),
        ];
        let tokens: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let c = &m.cfg;
        let one_layer = tokens
            * 4
            * (3 * c.hidden_size
                + 2 * c.num_attention_heads * c.head_dim
                + 2 * c.num_key_value_heads * c.head_dim
                + 3 * c.intermediate_size);
        for mask in &masks {
            let run = |mem: ActMemory| {
                let mut g = Grads::zeros(&m, mask, &[]).unwrap();
                let (loss, _) =
                    train::loss_and_grads_with(&m, &[], mask, &seqs, 1.0 / n as f32, &mut g, mem)
                        .unwrap();
                (loss, g)
            };
            let (l0, g0) = run(ActMemory::KeepAll);
            assert!(g0.slices.iter().any(|g| g.data.iter().any(|&x| x != 0.0)));
            for mem in [ActMemory::RecomputeAll, ActMemory::Budget(one_layer)] {
                let (l1, g1) = run(mem);
                assert_eq!(l0.to_bits(), l1.to_bits(), "{name} {mem:?}: loss");
                for (i, (a, b)) in g0.slices.iter().zip(&g1.slices).enumerate() {
                    let same = a
                        .data
                        .iter()
                        .zip(&b.data)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{name} {mem:?}: gradient of slice {i} differs");
                }
            }
        }
    }
}
