//! Embeds `kernels/*.cu` as strings (no nvcc at build time: NVRTC compiles them at run time
//! for the device's architecture). `#include "common.cuh"` is inlined here, so NVRTC needs
//! no include path or header list. Writes `$OUT_DIR/kernels.rs`:
//! - `KERNELS: &[KernelSource]`, one per file, with the names of its `extern "C"` kernels;
//! - one `pub const` per kernel function, `(module, function)`, so Rust code names kernels
//!   that exist (a typo is a compile error, not a run-time lookup failure).

use std::fmt::Write as _;
use std::path::Path;

fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("__global__") {
        rest = &rest[at + "__global__".len()..];
        let mut s = rest.trim_start();
        s = s.strip_prefix("void").unwrap_or(s).trim_start();
        if let Some(after) = s.strip_prefix("__launch_bounds__") {
            let close = after.find(')').expect("unclosed __launch_bounds__");
            s = after[close + 1..].trim_start();
        }
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            !name.is_empty(),
            "cannot read a kernel name near: {}",
            &s[..s.len().min(60)]
        );
        out.push(name);
    }
    out
}

fn main() {
    let dir = Path::new("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let common = std::fs::read_to_string(dir.join("common.cuh")).expect("kernels/common.cuh");
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("kernels/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let mut table = String::from("pub const KERNELS: &[KernelSource] = &[\n");
    let mut consts = String::new();
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let module = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let names = kernel_names(&text);
        let body = text.replace(
            "#include \"common.cuh\"",
            &format!(
                "// ---- common.cuh (inlined by build.rs) ----\n{common}\n// ---- {module}.cu ----"
            ),
        );
        assert!(
            !body.contains("#include"),
            "{}: only #include \"common.cuh\" is supported (NVRTC gets no include path)",
            path.display()
        );
        writeln!(
            table,
            "    KernelSource {{ module: {module:?}, source: {body:?}, functions: &{names:?} }},"
        )
        .unwrap();
        for n in &names {
            writeln!(
                consts,
                "pub const {}: KernelFn = KernelFn {{ module: {module:?}, function: {n:?} }};",
                n.to_uppercase()
            )
            .unwrap();
        }
    }
    table.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernels.rs");
    std::fs::write(out, table + &consts).unwrap();
}
