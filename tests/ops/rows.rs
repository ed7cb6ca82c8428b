//! Row moves and indexed writes refuse a bad index before writing anything: the output
//! keeps every bit (a half-written KV cache or gradient would corrupt what follows), and
//! the message is the one of `backend::shapes`, the same on every device.

use super::*;

/// Bits of a tensor on the host (NaN-safe equality).
fn bits<B: TrainBackend>(b: &B, t: &B::Tensor) -> Vec<u32> {
    let h = b.download(t).unwrap();
    h.data.iter().map(|x| x.to_bits()).collect()
}

/// `embed_bwd` with one id past the vocabulary (the last, after rows that would have been
/// added), `scatter_rows` with one row past the end (likewise last), `adamw_update` with a
/// region outside the weight: each fails and leaves its output as it was.
fn bad_index_writes_nothing_body<B: TrainBackend>(b: &B, _tol: f32) {
    let (vocab, d, n) = (11, 6, 5);
    let dx = up(b, &rand_t(70, &[n, d], 1.0));
    let mut dtable = up(b, &rand_t(71, &[vocab, d], 1.0));
    let before = bits(b, &dtable);
    let ids = [1, 2, 3, 4, vocab as u32];
    let e = b.embed_bwd(&dx, &ids, &mut dtable).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("embed_bwd: token id {vocab} is outside the vocabulary of {vocab}")
    );
    assert_eq!(bits(b, &dtable), before, "embed_bwd wrote before failing");

    let table = up(b, &rand_t(72, &[vocab, d], 1.0));
    let e = b.embed(&table, &[0, 99]).err().unwrap().to_string();
    assert_eq!(
        e,
        format!("embed: token id 99 is outside the vocabulary of {vocab}")
    );

    let (rows, c) = (9, 4);
    let mut dst = up(b, &rand_t(73, &[rows, c], 1.0));
    let before = bits(b, &dst);
    let src = up(b, &rand_t(74, &[3, c], 1.0));
    let e = b.scatter_rows(&mut dst, &[0, 5, rows], &src).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("scatter_rows: row {rows} out of {rows}")
    );
    assert_eq!(bits(b, &dst), before, "scatter_rows wrote before failing");
    let e = b.gather_rows(&dst, &[2, rows + 3]).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!("gather_rows: row {} out of {rows}", rows + 3)
    );

    // AdamW on a region past the weight's rows: neither the state nor the weight moves.
    let reg = Region::Rows { start: 8, len: 2 };
    let mut w = up(b, &rand_t(75, &[rows, c], 1.0));
    let before = bits(b, &w);
    let master = rand_t(76, &[2, c], 1.0);
    let mut s = b.opt_new(&master).unwrap();
    let g = up(b, &rand_t(77, &[2, c], 1.0));
    let step = pinpoint::backend::AdamStep {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step_size: 1e-2,
        bc2_sqrt: 0.5,
        decay: 0.99,
        clip: 1.0,
    };
    assert!(b.adamw_update(&mut s, &g, &mut w, reg, &step).is_err());
    assert_eq!(bits(b, &w), before, "adamw wrote the weight before failing");
    let st = b.opt_read(&s).unwrap();
    assert_eq!(
        st.master, master.data,
        "adamw moved the master before failing"
    );
    assert!(
        st.m.iter().chain(&st.v).all(|&x| x == 0.0),
        "adamw moved the moments"
    );
}
test_device!(
    bad_index_writes_nothing_body,
    bad_index_writes_nothing_cpu,
    bad_index_writes_nothing_cuda
);
