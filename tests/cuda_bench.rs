//! The random weights `pinpoint bench --shape` makes on the device (`init_uniform`: 7B
//! weights generated on the host and uploaded took 16 s of the device machine's budget)
//! are the host reference's values bit for bit. The timings themselves are `pinpoint
//! bench --device cuda` (scripts/gpu-check.sh).
#![cfg(feature = "cuda")]

mod cuda_common;
use cuda_common::gpu;
use pinpoint::backend::uniform_host;
use pinpoint::backend::Backend;

/// `init_uniform` on the device gives exactly the host reference's values, whatever the
/// launch geometry (sizes across the grid-stride boundary), for weights and constants.
#[test]
#[ignore = "needs a GPU"]
fn device_init_matches_the_host_reference() {
    let b = gpu("device_init_matches_the_host_reference");
    for (n, seed, scale, offset) in [
        (1usize, 1u64, 0.02f32, 0.0f32),
        (1000, 7, 1.0, 0.0),
        (256 * 8192 + 77, 3, 0.02, 0.0),
        (4099, 9, 0.0, 1.0),
    ] {
        let dev = b
            .download(&b.uniform(&[n], seed, scale, offset).unwrap())
            .unwrap();
        let host = uniform_host(n, seed, scale, offset);
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
