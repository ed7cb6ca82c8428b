//! The embedding lookup and its backward (a scatter-add).

use super::*;

/// The lookup (exact: rows of the table) and an out-of-vocabulary id refused.
fn embed_body<B: TrainBackend>(b: &B, _tol: f32) {
    let table = rand_t(40, &[131, 37], 1.0);
    let mut r = rand::rngs::StdRng::seed_from_u64(41);
    let ids: Vec<u32> = (0..29).map(|_| r.gen_range(0..131)).collect();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table.data[i as usize * 37..(i as usize + 1) * 37].to_vec())
        .collect();
    let tt = up(b, &table);
    let e = b.download(&b.embed(&tt, &ids).unwrap()).unwrap();
    assert_eq!(e.shape, [29, 37], "embed shape");
    assert_eq!(e.data, want, "embed");
    assert!(b.embed(&tt, &[131]).is_err(), "out-of-vocab id must fail");
}
test_device!(embed_body, embed_cpu, embed_cuda);

/// `dtable[ids[i]] += dx[i]` onto a nonzero table gradient, repeated ids adding up; rows
/// of ids that do not occur keep their exact bits; out-of-vocabulary ids refused.
fn embed_bwd_body<B: TrainBackend>(b: &B, tol: f32) {
    for (case, (vocab, d, n)) in [(131, 37, 29), (1000, 256, 300), (7, 5, 40)]
        .into_iter()
        .enumerate()
    {
        let s = 10 * case as u64;
        let dx = rand_t(s + 42, &[n, d], 1.0);
        let mut r = rand::rngs::StdRng::seed_from_u64(s + 43);
        let mut ids: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
        ids[n - 1] = ids[0];
        let t0 = rand_t(s + 44, &[vocab, d], 2.0);
        let mut want = f64s(&t0);
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..d {
                want[id as usize * d + j] += dx.data[i * d + j] as f64;
            }
        }
        if case == 0 {
            let dxf = f64s(&dx);
            let lookup = |t: &[f64]| -> f64 {
                let rows = ids
                    .iter()
                    .flat_map(|&i| t[i as usize * d..(i as usize + 1) * d].to_vec());
                dot(&dxf, &rows.collect::<Vec<f64>>())
            };
            let grad: Vec<f64> = want
                .iter()
                .zip(&t0.data)
                .map(|(w, &t)| w - t as f64)
                .collect();
            fd_check("embed ref dtable", &lookup, &f64s(&t0), &grad);
        }
        let mut got = up(b, &t0);
        b.embed_bwd(&up(b, &dx), &ids, &mut got).unwrap();
        let got = run(b, &got);
        check(
            &format!("embed_bwd V{vocab} d{d} n{n}"),
            &got,
            &f32s(&want),
            tol,
        );
        for id in (0..vocab).filter(|&id| !ids.contains(&(id as u32))) {
            let row = id * d..(id + 1) * d;
            assert_eq!(got[row.clone()], t0.data[row], "embed_bwd touched row {id}");
        }
        let mut bad = b.zeros(&[vocab, d]).unwrap();
        assert!(b
            .embed_bwd(&up(b, &dx), &vec![vocab as u32; n], &mut bad)
            .is_err());
    }
}
test_device!(embed_bwd_body, embed_bwd_cpu, embed_bwd_cuda, 2e-2);
