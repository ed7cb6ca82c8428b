//! The bad-input corpus: the real `pinpoint` binary on a tiny fixture model (tiny-llama plus
//! a word-level tokenizer written by `bad_input/mod.rs`), one case per bad input. Every
//! failing case must exit non-zero without a panic (never 101, no "panicked at"), name the
//! file, flag or field in its error, and leave the input model's bytes unchanged. Cases that
//! must succeed (symlinks written through, resumes) check what is on disk.
//!
//! The machinery and the cases live in `bad_input/`: one module per kind of input.

// `#[path]` because `tests/bad_input.rs` (another test crate) would make `mod bad_input;`
// ambiguous.
#[path = "bad_input/mod.rs"]
mod bad_input;
mod common;
use bad_input::{config, data, flags, gguf, outputs, safetensors, training};
use bad_input::{run_cases, Case, Env};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn config_json() {
    run_cases(config::cases());
}

#[test]
fn safetensors_files() {
    run_cases(safetensors::cases());
}

#[test]
fn gguf_files() {
    run_cases(gguf::cases());
}

#[test]
fn jsonl_pairs_and_heads() {
    run_cases(data::cases());
}

#[test]
fn numeric_flags() {
    run_cases(flags::cases());
}

#[test]
fn output_locations() {
    // All but the lock case run through the table; the lock case holds the lock here.
    let (lock, rest): (Vec<Case>, Vec<Case>) = outputs::cases()
        .into_iter()
        .partition(|c| c.name.contains("locked"));
    run_cases(rest);
    for c in lock {
        let env = Env::new();
        let _held = pinpoint::guard::lock_dir(&env.p("o"), "--out").unwrap();
        let o = env.run(&c.args);
        assert_eq!(o.code, Some(1), "{}", o.stderr);
        assert!(
            o.stderr.contains("in use") && o.stderr.contains("--out o"),
            "{}",
            o.stderr
        );
        assert!(!env.p("o/model.safetensors").exists());
    }
}

/// Flag values that parse but make no sense (issue 24).
#[test]
fn flag_values_that_make_no_sense() {
    run_cases(bad_input::flag_values::cases());
    bad_input::flag_values::check_blank_home();
}

/// Sizes past the model's context or the machine's memory (issue 24).
#[test]
fn impossible_sizes() {
    run_cases(bad_input::sizes::cases());
}

/// Errors that name the file, field or item (issue 24).
#[test]
fn errors_name_the_thing() {
    run_cases(bad_input::messages::cases());
}

#[test]
fn training_and_resume() {
    run_cases(training::cases());
}

#[test]
fn closed_stdout_and_full_disk() {
    let env = Env::new();
    let bin = env!("CARGO_BIN_EXE_pinpoint");
    // stdout on /dev/full.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(bin)
        .args(["inspect", "--model", "m", "--json"])
        .current_dir(&env.root)
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left") && !err.contains("panicked"),
        "{err}"
    );
    // stdout a pipe whose reader is gone before anything is written.
    let (r, w) = pipe();
    drop(r);
    let o = Command::new(bin)
        .args(["inspect", "--model", "m"])
        .current_dir(&env.root)
        .stdout(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(
        err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
    // The same for a command that writes files first.
    let (r, w) = pipe();
    drop(r);
    let o = Command::new(bin)
        .args([
            "diagnose",
            "--model",
            "m",
            "--pairs",
            "pairs.jsonl",
            "--out",
            "dg",
        ])
        .current_dir(&env.root)
        .stdout(w)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(env.p("dg/heads.json").is_file());
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::unix::io::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fresh descriptors that we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn the_corpus_has_at_least_150_cases() {
    let n = config::cases().len()
        + safetensors::cases().len()
        + gguf::cases().len()
        + data::cases().len()
        + flags::cases().len()
        + outputs::cases().len()
        + training::cases().len();
    assert!(n >= 150, "only {n} cases");
    eprintln!("bad-input corpus: {n} cases");
}

#[test]
fn pipeline_stages_verify_their_outputs() {
    use pinpoint::pipeline::{Pipeline, PipelineConfig};
    let env = Env::new();
    let cfg = PipelineConfig::cpu_defaults(env.p("m"), "tiny".into());
    let out = env.p("run");
    let write = |_: &Pipeline, d: &Path| {
        std::fs::write(d.join("a.txt"), "hello world")?;
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("sub/b.bin"), [7u8; 100])?;
        Ok(())
    };
    let run = |expect_ran: bool, why: &str| {
        let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
        p.stage("split", write).unwrap();
        assert_eq!(p.ran.len(), usize::from(expect_ran), "{why}");
    };
    run(true, "first run");
    run(false, "outputs intact: skipped");
    std::fs::write(out.join("split/sub/b.bin"), [7u8; 10]).unwrap();
    run(true, "a truncated output re-runs the stage");
    run(false, "rewritten: skipped again");
    std::fs::write(out.join("split/a.txt"), "hello world!").unwrap();
    run(true, "a changed output re-runs the stage");
    std::fs::remove_file(out.join("split/a.txt")).unwrap();
    run(true, "a deleted output re-runs the stage");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stages.json")).unwrap()).unwrap();
    assert_eq!(st["done"]["split"]["outputs"]["sub/b.bin"]["bytes"], 100);
    // Unknown stage names are refused, listing the valid ones.
    let e = cfg
        .check_stop_after(Some("tune-spt-k3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tune-spt-k3") && e.contains("tune-spt-k8, tune-sft"),
        "{e}"
    );
    assert!(cfg.check_stop_after(Some("kl-lora")).is_ok());
    let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
    let e = p.run_all(Some("diagnosis")).unwrap_err().to_string();
    assert!(e.contains("diagnosis"), "{e}");
}

// Issue 24: ownership, resume and rerun content checks, concurrent writers, saved dtypes
// and permissions, ambiguous model folders.

#[test]
fn ownership_of_outputs() {
    run_cases(bad_input::ownership::cases());
}

#[test]
fn resume_checks_content() {
    run_cases(bad_input::resume::cases());
}

#[test]
fn saved_models_keep_dtypes() {
    run_cases(bad_input::saved::cases());
}

#[test]
fn outputs_get_umask_permissions() {
    bad_input::saved::umask_modes();
}

#[test]
fn ambiguous_model_folders() {
    run_cases(bad_input::folders::cases());
}

#[test]
fn concurrent_writers() {
    for c in bad_input::locks::cases() {
        let env = Env::new();
        let _held = pinpoint::guard::lock_dir_as(&env.p("o"), "--out", "test holder").unwrap();
        let o = env.run(&c.args);
        assert_eq!(o.code, Some(1), "{}: {}", c.name, o.stderr);
        for n in ["o", "in use by test holder", ".pinpoint.lock"] {
            assert!(
                o.stderr.contains(n),
                "{}: stderr lacks {n:?}: {}",
                c.name,
                o.stderr
            );
        }
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        let written: Vec<_> = std::fs::read_dir(env.p("o"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".pinpoint.lock")
            .collect();
        assert!(written.is_empty(), "{}: wrote {written:?}", c.name);
    }
}

#[test]
fn issue_24_kinds_have_enough_cases() {
    let n = |c: Vec<Case>| c.len();
    assert!(n(bad_input::ownership::cases()) >= 4 + 5);
    assert!(n(bad_input::resume::cases()) >= 5 + 5);
    assert!(n(bad_input::saved::cases()) >= 5);
    assert!(n(bad_input::folders::cases()) >= 5 + 5);
    assert!(n(bad_input::locks::cases()) >= 3 + 5);
}

#[test]
fn pipeline_reruns_check_settings_and_weights() {
    use pinpoint::pipeline::{Pipeline, PipelineConfig};
    let env = Env::new();
    let cfg = PipelineConfig::cpu_defaults(env.p("m"), "tiny".into());
    let out = env.p("run");
    pinpoint::Model::load_cpu(&env.p("m")).unwrap();
    let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
    p.check_weights().unwrap();
    p.stage("split", |_, d| Ok(std::fs::write(d.join("a.txt"), "x")?))
        .unwrap();
    // One setting changed: the refusal names it with both values, and nothing else.
    let mut other = cfg.clone();
    other.micro_batch = 4;
    let e = format!("{:#}", Pipeline::open(other, &out, false).err().unwrap());
    assert!(e.contains("--micro-batch 8 then, 4 now"), "{e}");
    assert!(!e.contains("--steps") && !e.contains("--lr"), "{e}");
    let mut other = cfg.clone();
    other.recipe.planted_share = 0.25;
    let e = format!("{:#}", Pipeline::open(other, &out, false).err().unwrap());
    assert!(
        e.contains("recipe.planted_share") && e.contains("0.25 now"),
        "{e}"
    );
    // Same settings, same weights: open and go on.
    let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
    p.check_weights().unwrap();
    assert!(p.is_done("split"));
    // The weights changed in place (same path, same config): refused before any skip.
    let w = env.p("m/model.safetensors");
    let mut b = std::fs::read(&w).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n + 2] ^= 0x01;
    std::fs::write(&w, b).unwrap();
    pinpoint::Model::load_cpu(&env.p("m")).unwrap();
    let mut p = Pipeline::open(cfg, &out, false).unwrap();
    let e = format!("{:#}", p.check_weights().unwrap_err());
    assert!(
        e.contains("weights changed") && e.contains("stages.json"),
        "{e}"
    );
}
