//! GGUF import: truncated files, patched header fields, and bad output folders.

use super::{absent, concat, fail, nothing, ok, Case, Env, Out};

const IMPORT: &str = "import t.gguf out";

fn gguf_bytes(e: &Env, f: impl Fn(&mut Vec<u8>)) {
    let mut b = e.read("t.gguf");
    f(&mut b);
    e.write("t.gguf", b);
}

pub fn cases() -> Vec<Case> {
    concat([cut_cases(), patch_cases(), file_cases()])
}

fn cut_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = [0usize, 3, 10, 23, 24, 40, 200, 1000, 20000, 40000]
        .into_iter()
        .map(|keep| {
            fail(
                &format!("gguf: cut at {keep}"),
                move |e: &Env| gguf_bytes(e, |b| b.truncate(keep)),
                IMPORT,
                &["t.gguf"],
            )
            .after(absent("out/model.safetensors"))
        })
        .collect();
    cases.push(
        fail(
            "gguf: last byte cut",
            |e: &Env| {
                gguf_bytes(e, |b| {
                    b.pop();
                })
            },
            IMPORT,
            &["t.gguf"],
        )
        .after(absent("out/model.safetensors")),
    );
    cases
}

/// `t.gguf` with these bytes written at this offset.
const PATCHES: &[(&str, usize, &[u8], &[&str])] = &[
    ("gguf: bad magic", 0, b"GGML", &["t.gguf", "magic"]),
    (
        "gguf: version 1",
        4,
        &1u32.to_le_bytes(),
        &["t.gguf", "version"],
    ),
    (
        "gguf: version 9",
        4,
        &9u32.to_le_bytes(),
        &["t.gguf", "version"],
    ),
    (
        "gguf: tensor count huge",
        8,
        &u64::MAX.to_le_bytes(),
        &["t.gguf"],
    ),
    (
        "gguf: kv count huge",
        16,
        &u64::MAX.to_le_bytes(),
        &["t.gguf"],
    ),
    ("gguf: kv count zero", 16, &0u64.to_le_bytes(), &["t.gguf"]),
    (
        "gguf: tensor count zero",
        8,
        &0u64.to_le_bytes(),
        &["t.gguf"],
    ),
    (
        "gguf: key length huge",
        24,
        &u64::MAX.to_le_bytes(),
        &["t.gguf"],
    ),
    ("gguf: value type 99", 52, &99u32.to_le_bytes(), &["t.gguf"]),
    (
        "gguf: architecture renamed",
        32,
        b"general.architectur_",
        &["t.gguf"],
    ),
];

fn patch_cases() -> Vec<Case> {
    PATCHES
        .iter()
        .map(|&(name, at, bytes, needles)| {
            fail(
                name,
                move |e: &Env| gguf_bytes(e, |b| b[at..at + bytes.len()].copy_from_slice(bytes)),
                IMPORT,
                needles,
            )
            .after(absent("out/model.safetensors"))
        })
        .collect()
}

fn file_cases() -> Vec<Case> {
    vec![
        fail(
            "gguf: zeros",
            |e: &Env| gguf_bytes(e, |b| b.iter_mut().for_each(|x| *x = 0)),
            IMPORT,
            &["t.gguf"],
        ),
        fail(
            "gguf: a folder",
            |e: &Env| std::fs::create_dir(e.p("dir.gguf")).unwrap(),
            "import dir.gguf out",
            &["dir.gguf", "is a directory"],
        ),
        fail(
            "gguf: missing",
            nothing,
            "import none.gguf out",
            &["none.gguf"],
        ),
        fail(
            "gguf: out not empty",
            |e: &Env| e.write("out/keep.txt", "mine"),
            IMPORT,
            &["out", "not empty"],
        )
        .after(|e: &Env, _: &Out| {
            (e.read("out/keep.txt") == b"mine" && !e.p("out/config.json").exists())
                .then_some(())
                .ok_or("out/ was touched".into())
        }),
        fail(
            "gguf: out is a file",
            |e: &Env| e.write("out", "mine"),
            IMPORT,
            &["out", "not a folder"],
        )
        .after(|e: &Env, _: &Out| {
            (e.read("out") == b"mine")
                .then_some(())
                .ok_or("out was replaced".into())
        }),
        fail(
            "gguf: out is the model",
            nothing,
            "import t.gguf m",
            &["m", "not empty"],
        ),
        ok("gguf: good import", nothing, IMPORT, |e: &Env, _: &Out| {
            e.p("out/model.safetensors")
                .is_file()
                .then_some(())
                .ok_or("no model written".into())
        }),
    ]
}
