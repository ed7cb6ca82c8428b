//! The CUDA backend's training helpers (`TrainBackend for CudaBackend`) that no op body in
//! tests/ops/ covers, against the f32 CPU oracle: scale and copy on random bf16-exact
//! inputs of awkward sizes, outputs poisoned with NaN (an unwritten element fails); region
//! reads and writes (bytes outside the region bit-identical). Every backward op and AdamW
//! against f64 references: tests/ops/. The whole backward on the tiny fixtures is in
//! `cuda_backward.rs`.
//!
//! Every test that needs the device is `#[ignore = "needs a GPU"]`: `cargo test` lists it as
//! ignored; scripts/gpu-check.sh runs it with `--include-ignored`, and without a GPU it fails.
//! Each measured error is printed as `<what>: rel err <x>` (scripts/gpu-check.sh collects
//! them).
#![cfg(feature = "cuda")]

mod cuda_common;
use cuda_common::*;

use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::cuda::CudaBackend;
use pinpoint::backend::{Backend, Region, TrainBackend};
use pinpoint::model::HostTensor;

/// One backward op: bf16 inputs and output, f32 inside.
const OP_TOL: f32 = 2e-2;

fn rng(seed: u64) -> rand::rngs::StdRng {
    seeded(seed, 0x7ea1_b0d5)
}

fn down(g: &CudaBackend, t: &<CudaBackend as Backend>::Tensor) -> HostTensor {
    g.download(t).unwrap()
}

/// `scale`, and `copy` (independent of its source). The backward ops against f64
/// references: tests/ops/.
#[test]
#[ignore = "needs a GPU"]
fn scale_and_copy_match_cpu() {
    let g = gpu("scale/copy");
    let cpu = CpuBackend;
    let mut r = rng(2);
    for (n, d) in [(1, 48), (7, 333), (33, 4100), (300, 64)] {
        let x = rand_t(&mut r, &[n, d], 2.0);
        let xd = g.upload(&x).unwrap();
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
