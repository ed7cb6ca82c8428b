//! Every kernel in `kernels/` compiles under NVRTC for sm_80 and sm_90, and the PTX holds
//! what it should (each `extern "C"` entry; tensor-core mma and cp.async in the GEMM).
//! Needs no GPU: only `libnvrtc`. Where it comes from (first found):
//! `$PINPOINT_NVRTC` (file or folder), the PyPI package `nvidia-cuda-nvrtc` as seen by
//! `python3` (`site-packages/nvidia/cu13/lib`, see scripts/install-nvrtc.sh), the library
//! path, `/usr/local/cuda/lib64`. Missing NVRTC fails the tests that need it under CI
//! (`CI=true`) and reports them ignored, with the reason, elsewhere (`harness = false`: the
//! trials of libtest-mimic can be ignored at run time, which `#[test]` cannot).

#[cfg(feature = "cuda")]
use libtest_mimic::{Arguments, Completion, Failed, Trial};
#[cfg(feature = "cuda")]
use pinpoint::backend::cuda::registry::{self, KernelSource, KERNELS};
#[cfg(feature = "cuda")]
use std::path::PathBuf;
#[cfg(feature = "cuda")]
use std::sync::OnceLock;

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("nvrtc_compile: built without the cuda feature, nothing to test");
}

#[cfg(feature = "cuda")]
fn main() {
    let args = Arguments::from_args();
    let needs_nvrtc: [(&str, fn()); 3] = [
        (
            "every_kernel_compiles_for_sm80_and_sm90",
            every_kernel_compiles_for_sm80_and_sm90,
        ),
        (
            "a_broken_kernel_fails_with_the_compiler_log",
            a_broken_kernel_fails_with_the_compiler_log,
        ),
        (
            "hot_kernels_do_not_spill_registers",
            hot_kernels_do_not_spill_registers,
        ),
    ];
    let mut trials: Vec<Trial> = needs_nvrtc
        .into_iter()
        .map(|(name, body)| Trial::ignorable_test(name, move || with_nvrtc(body)))
        .collect();
    let plain: [(&str, fn()); 2] = [
        (
            "ptx_cache_key_covers_source_arch_and_nvrtc",
            ptx_cache_key_covers_source_arch_and_nvrtc,
        ),
        (
            "a_spill_report_with_loads_is_a_spill",
            a_spill_report_with_loads_is_a_spill,
        ),
    ];
    trials.extend(plain.into_iter().map(|(name, body)| {
        Trial::test(name, move || {
            body();
            Ok(())
        })
    }));
    libtest_mimic::run(&args, trials).exit();
}

/// Run `body` where NVRTC loads; report the trial ignored (with the reason) where it does
/// not, or failed under CI.
#[cfg(feature = "cuda")]
fn with_nvrtc(body: fn()) -> Result<Completion, Failed> {
    match nvrtc() {
        Ok(()) => {
            body();
            Ok(Completion::Completed)
        }
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            Err(format!("NVRTC is required under CI but missing: {why}").into())
        }
        Err(why) => Ok(Completion::ignored_with(format!("no NVRTC: {why}"))),
    }
}

#[cfg(feature = "cuda")]
/// The lib folder of the pip package `nvidia-cuda-nvrtc`, asked of python3.
fn pip_nvrtc_dir() -> Option<PathBuf> {
    let code = "import nvidia, os\n\
                for p in nvidia.__path__:\n\
                \x20   for sub in sorted(os.listdir(p)):\n\
                \x20       d = os.path.join(p, sub, 'lib')\n\
                \x20       if os.path.isdir(d) and any(f.startswith('libnvrtc.so') for f in os.listdir(d)):\n\
                \x20           print(d)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", code])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // cu13 sorts after cu12: take the newest.
    text.lines().last().map(PathBuf::from)
}

#[cfg(feature = "cuda")]
/// `Ok` when NVRTC is usable; the reason otherwise.
fn nvrtc() -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("PINPOINT_NVRTC").is_none() {
            if let Some(dir) = pip_nvrtc_dir() {
                eprintln!("using NVRTC from {}", dir.display());
                registry::preload_nvrtc(&dir)?;
            }
        }
        registry::ensure_nvrtc()
    })
    .clone()
}

#[cfg(feature = "cuda")]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let (major, minor) = registry::nvrtc_version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    let mut modules: Vec<&str> = KERNELS.iter().map(|k| k.module).collect();
    modules.sort_unstable();
    assert_eq!(
        modules,
        [
            "adamw",
            "attention",
            "attention_tc",
            "elementwise",
            "embed",
            "gemm",
            "init",
            "norm",
            "rope",
            "rows",
            "sample",
            "swiglu",
            "xent"
        ],
        "kernel files embedded by build.rs"
    );
    let mut failures = Vec::new();
    for arch in ["sm_80", "sm_90"] {
        for k in KERNELS {
            match registry::compile_ptx(k, arch) {
                Ok(ptx) => {
                    for f in k.functions {
                        assert!(
                            ptx.contains(&format!(".entry {f}(")),
                            "{arch} {}.cu: no entry {f} in the PTX",
                            k.module
                        );
                    }
                    if matches!(k.module, "gemm" | "attention_tc") {
                        assert!(ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
                    }
                    if k.module == "gemm" {
                        assert!(ptx.contains("cp.async.cg.shared.global"));
                    }
                    // Register arrays must stay in registers where speed matters (rope's
                    // double sincos keeps a small local array for huge arguments: allowed).
                    assert!(
                        !(matches!(k.module, "gemm" | "attention" | "attention_tc")
                            && ptx.contains(".local")),
                        "{arch} {}.cu: PTX uses local memory (a spilled register array?)",
                        k.module
                    );
                    eprintln!(
                        "{arch} {:<10} ok: {} kernels, {} bytes of PTX",
                        k.module,
                        k.functions.len(),
                        ptx.len()
                    );
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[cfg(feature = "cuda")]
fn a_broken_kernel_fails_with_the_compiler_log() {
    let broken = KernelSource {
        module: "broken",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        functions: &["k"],
    };
    let err = registry::compile_ptx(&broken, "sm_90")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("undefined_name"),
        "log should name the error: {err}"
    );
    assert!(err.contains("broken.cu"), "{err}");
}

#[cfg(feature = "cuda")]
fn ptx_cache_key_covers_source_arch_and_nvrtc() {
    let k = KERNELS[0];
    let mut edited = k;
    edited.source = "// edited\n";
    let a = registry::cache_path(&k, "sm_90", (13, 0));
    assert_ne!(a, registry::cache_path(&k, "sm_80", (13, 0)));
    assert_ne!(a, registry::cache_path(&k, "sm_90", (13, 1)));
    assert_ne!(a, registry::cache_path(&edited, "sm_90", (13, 0)));
    assert!(a.starts_with(pinpoint::util::cache_dir().join("ptx")));
}

#[cfg(feature = "cuda")]
fn hot_kernels_do_not_spill_registers() {
    for arch in ["sm_80", "sm_90"] {
        for module in ["gemm", "attention", "attention_tc", "xent", "norm"] {
            let k = registry::source(module).unwrap();
            let log = registry::ptxas_report(k, arch).unwrap();
            eprintln!("---- {arch} {module}.cu\n{log}");
            assert!(log.contains("Used"), "no ptxas report in the log: {log}");
            assert!(
                !log.lines().any(|l| l.contains("spill") && !spill_free(l)),
                "{arch} {module}.cu spills registers:\n{log}"
            );
        }
    }
}

#[cfg(feature = "cuda")]
/// A ptxas line about spills that reports none: both stores and loads are 0 bytes
/// (`0 bytes spill stores, 0 bytes spill loads`); a line with spill loads alone is a spill.
fn spill_free(line: &str) -> bool {
    line.contains(" 0 bytes spill stores") && line.contains(" 0 bytes spill loads")
}

#[cfg(feature = "cuda")]
fn a_spill_report_with_loads_is_a_spill() {
    assert!(spill_free(
        "ptxas info    :  0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    ));
    assert!(!spill_free(
        "ptxas info    :  0 bytes stack frame, 0 bytes spill stores, 8 bytes spill loads"
    ));
    assert!(!spill_free(
        "ptxas info    : 16 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads"
    ));
}
