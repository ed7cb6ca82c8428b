// Probe: GEMM throughput of the CPU backend on SmolLM2 training shapes (2 threads).
// `cargo bench --bench gemm_probe [-- FILTER]`.
use pinpoint::backend::cpu::gemm::{gemm_packed, Strided};
use std::time::Instant;

/// User + system CPU seconds of this process (all threads).
fn cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Best wall time and best CPU time over `reps` runs (after one warm-up).
fn time(label: &str, flop: f64, reps: usize, mut f: impl FnMut()) {
    f();
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_s());
        f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min(cpu_s() - c);
    }
    println!(
        "{label:<36} {:8.2} ms {:6.1} GFLOP/s | cpu {:8.2} ms {:6.1} GFLOP/cpu-s",
        wall * 1e3,
        flop / wall / 1e9,
        cpu * 1e3,
        flop / cpu / 1e9
    );
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let shapes = [
        (1024usize, 576usize, 1536usize),
        (1024, 1536, 576),
        (1024, 576, 576),
        (1024, 576, 192),
        (1016, 576, 49152),
    ];
    for &(n, k, m) in &shapes {
        let x: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let flop = 2.0 * (n * k * m) as f64;
        let reps = if m > 10000 { 2 } else { 8 };
        let label = format!("fwd x@W^T {n}x{k}x{m}");
        if filter.as_ref().is_none_or(|f| label.contains(f.as_str())) {
            time(&label, flop, reps, || {
                std::hint::black_box(pinpoint::backend::cpu::matmul_t(&x, &w, n, k, m));
            });
        }
        // Backward of the same layer: dx [n, k] = dy [n, m] @ W [m, k].
        let dy: Vec<f32> = (0..n * m).map(|i| (i % 3) as f32 * 0.1).collect();
        let label = format!("bwd dy@W {n}x{m}x{k}");
        if filter.as_ref().is_none_or(|f| label.contains(f.as_str())) {
            time(&label, flop, reps, || {
                let mut dx = vec![0.0f32; n * k];
                let a = Strided {
                    data: &dy,
                    off: 0,
                    rs: m,
                    cs: 1,
                };
                let b = Strided {
                    data: &w,
                    off: 0,
                    rs: k,
                    cs: 1,
                };
                unsafe { gemm_packed(&mut dx, false, n, k, m, a, b) };
                std::hint::black_box(dx);
            });
        }
    }
}
