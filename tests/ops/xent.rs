//! Fused softmax cross-entropy: the summed loss and the logits' gradient.

use super::*;

/// `(sum over rows with a target of -log softmax(l)[t], (softmax - onehot) * scale)`.
fn xent_ref(l: &[f64], targets: &[Option<u32>], scale: f64) -> (f64, Vec<f64>) {
    let vocab = l.len() / targets.len();
    let mut loss = 0.0;
    let mut dl = vec![0.0; l.len()];
    for (i, t) in targets.iter().enumerate() {
        let Some(t) = t else { continue };
        let row = &l[i * vocab..(i + 1) * vocab];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|x| (x - mx).exp()).sum();
        loss += mx + sum.ln() - row[*t as usize];
        for (j, x) in row.iter().enumerate() {
            let onehot = if j == *t as usize { 1.0 } else { 0.0 };
            dl[i * vocab + j] = ((x - mx).exp() / sum - onehot) * scale;
        }
    }
    (loss, dl)
}

/// Rows without a target (zero gradient, exactly), awkward vocabularies, a scale; the loss
/// within `tol / 20`; targets out of the vocabulary or of the wrong count refused.
fn xent_body<B: TrainBackend>(b: &B, tol: f32) {
    let cases = [
        (4, 11, 0.5f32),
        (5, 11, 0.5),
        (9, 517, 1.0),
        (6, 32003, 0.125),
    ];
    for (case, (n, vocab, scale)) in cases.into_iter().enumerate() {
        let logits = rand_t(
            50 + case as u64,
            &[n, vocab],
            if case == 0 { 4.0 } else { 6.0 },
        );
        let mut r = rand::rngs::StdRng::seed_from_u64(60 + case as u64);
        let tg: Vec<Option<u32>> = (0..n)
            .map(|i| (i % 3 != 1).then(|| r.gen_range(0..vocab as u32)))
            .collect();
        let lf = f64s(&logits);
        let (loss, dl) = xent_ref(&lf, &tg, scale as f64);
        if case == 0 {
            let f = |l: &[f64]| scale as f64 * xent_ref(l, &tg, 1.0).0;
            fd_check("xent ref dlogits", &f, &lf, &dl);
        }
        let what = format!("xent n{n} V{vocab}");
        let (lg, dg) = b.xent_fwd_bwd(&up(b, &logits), &tg, scale).unwrap();
        let e = ((lg - loss) / loss).abs() as f32;
        eprintln!("{what} loss: rel err {e:.2e}");
        assert!(e <= tol / 20.0, "{what} loss {lg} vs {loss}");
        let dg = run(b, &dg);
        check(&format!("{what} dlogits"), &dg, &f32s(&dl), tol);
        for (i, t) in tg.iter().enumerate() {
            if t.is_none() {
                assert!(
                    dg[i * vocab..(i + 1) * vocab].iter().all(|&x| x == 0.0),
                    "{what}: row {i} without target not zero"
                );
            }
        }
    }
    let l = up(b, &rand_t(70, &[2, 9], 1.0));
    assert!(b.xent_fwd_bwd(&l, &[Some(9), None], 1.0).is_err());
    assert!(b.xent_fwd_bwd(&l, &[Some(1)], 1.0).is_err());
}
test_device!(xent_body, xent_cpu, xent_cuda, 2e-2);

/// The host variant (`backend::host::xent_row_f64`, the cross-entropy of rows the training
/// loss scores on the host) row by row: its loss and gradient against the f64 reference
/// within f64 rounding (loss) and one f32 rounding (gradient), and against the CPU op.
#[test]
fn xent_host_row_f64() {
    use pinpoint::backend::cpu::CpuBackend;
    use pinpoint::backend::host::xent_row_f64;
    for (case, (n, vocab, scale)) in [(3, 11, 0.5f32), (3, 517, 1.0), (2, 32003, 0.125)]
        .into_iter()
        .enumerate()
    {
        let logits = rand_t(80 + case as u64, &[n, vocab], 6.0);
        let mut r = rand::rngs::StdRng::seed_from_u64(90 + case as u64);
        for (i, row) in logits.data.chunks(vocab).enumerate() {
            let t = r.gen_range(0..vocab as u32);
            let what = format!("host xent V{vocab} row {i}");
            let mut host = row.to_vec();
            let loss = xent_row_f64(&mut host, t, scale);
            let row_t = HostTensor::new(vec![1, vocab], row.to_vec());
            let (want, dl) = xent_ref(&f64s(&row_t), &[Some(t)], scale as f64);
            let e = ((loss - want) / want).abs();
            assert!(e <= 1e-12, "{what} loss {loss} vs {want} (rel err {e:e})");
            check(&format!("{what} dlogits"), &host, &f32s(&dl), 1e-6);
            let (op_loss, op_dl) = CpuBackend.xent_fwd_bwd(&row_t, &[Some(t)], scale).unwrap();
            let e = ((op_loss - loss) / loss).abs() as f32;
            assert!(e <= CPU_TOL / 20.0, "{what}: op loss {op_loss} vs {loss}");
            check(&format!("{what} vs op"), &host, &op_dl.data, CPU_TOL);
        }
    }
}
