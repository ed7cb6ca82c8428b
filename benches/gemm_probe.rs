// Quick probe: GEMM throughput of the CPU backend on SmolLM2 shapes.
use std::time::Instant;
fn main() {
    let (n, k, m) = (1024usize, 576usize, 1536usize);
    let x: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
    for _ in 0..2 {
        let t = Instant::now();
        let reps = 10;
        for _ in 0..reps {
            std::hint::black_box(pinpoint::backend::cpu::matmul_t(&x, &w, n, k, m));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "gemm {n}x{k}x{m}: {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (n * k * m) as f64 / s / 1e9
        );
    }
}
