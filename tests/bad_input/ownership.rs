//! Nothing a user owns is overwritten: the four data-loss cases of issue 24 (a symlink and
//! `..` in `--out`, `tune --out` over a user's own model, a user's `step-*-keep` copy and
//! `logits --out link/../config.json`) and more of the same kind: pinpoint writes only into
//! a folder it created or one holding its marker of the same command, every path judged
//! after resolution.

use super::{fail, ok, split, Case, Env, Out, TUNE};

/// `z/L` -> `m/sub`: `z/L/..` is the input model itself.
fn link_into_model(e: &Env) {
    std::fs::create_dir_all(e.p("m/sub")).unwrap();
    std::fs::create_dir_all(e.p("z")).unwrap();
    std::os::unix::fs::symlink(e.p("m/sub"), e.p("z/L")).unwrap();
}

/// `mine/` holds the user's own sharded model (no checkpoints, no marker).
fn users_model(e: &Env) {
    e.write("mine/config.json", r#"{"mine": true}"#);
    e.write("mine/model.safetensors.index.json", r#"{"weight_map": {}}"#);
    e.write("mine/model-00001-of-00002.safetensors", "shard one");
    e.write("mine/model-00002-of-00002.safetensors", "shard two");
}

/// Every file of `rel` still holds what [`users_model`] wrote.
fn users_model_intact(e: &Env, _: &Out) -> Result<(), String> {
    let want = [
        ("mine/config.json", r#"{"mine": true}"#),
        ("mine/model.safetensors.index.json", r#"{"weight_map": {}}"#),
        ("mine/model-00001-of-00002.safetensors", "shard one"),
        ("mine/model-00002-of-00002.safetensors", "shard two"),
    ];
    for (f, text) in want {
        match std::fs::read(e.p(f)) {
            Ok(b) if b == text.as_bytes() => {}
            _ => return Err(format!("{f} was changed or removed")),
        }
    }
    let extra: Vec<String> = std::fs::read_dir(e.p("mine"))
        .unwrap()
        .filter_map(|x| x.ok())
        .map(|x| x.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("model") && n != "config.json")
        .collect();
    extra
        .is_empty()
        .then_some(())
        .ok_or(format!("pinpoint wrote into mine/: {extra:?}"))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn data_loss_cases() -> Vec<Case> {
    let base = TUNE.replace("--steps 1", "--steps 4");
    let first = format!("{base} --out r --checkpoint-every 2");
    vec![
        fail(
            "own: tune --out z/L/.. with z/L a link into the model",
            link_into_model,
            &format!("{TUNE} --out z/L/.."),
            &["--out z/L/..", "input model"],
        ),
        fail(
            "own: logits --out z/L/../config.json",
            link_into_model,
            "logits --model m --prompt yes --top-only --out z/L/../config.json",
            &["--out z/L/../config.json", "input model"],
        ),
        fail(
            "own: tune --out over the user's sharded model",
            users_model,
            &format!("{TUNE} --out mine"),
            &["--out mine", "not empty", "config.json"],
        )
        .after(users_model_intact),
        ok(
            "own: resume keeps the user's step-000002-keep",
            move |e: &Env| {
                let o = e.run(&split(&first));
                assert_eq!(o.code, Some(0), "{}", o.stderr);
                // The user keeps a copy; the run is rewound to step 2 and resumed.
                copy_dir(
                    &e.p("r/checkpoints/step-000002"),
                    &e.p("r/checkpoints/step-000002-keep"),
                );
                std::fs::remove_dir_all(e.p("r/checkpoints/step-000004")).unwrap();
                e.write("r/checkpoints/latest", "step-000002");
            },
            &format!("{base} --out r --checkpoint-every 2 --keep-checkpoints 1 --resume"),
            |e: &Env, o: &Out| {
                if !o.stderr.contains("resuming at step 2") {
                    return Err("did not resume at step 2".into());
                }
                if !e
                    .p("r/checkpoints/step-000002-keep/tune_state.json")
                    .is_file()
                {
                    return Err("the user's step-000002-keep was deleted".into());
                }
                if e.p("r/checkpoints/step-000002").exists() {
                    return Err("pinpoint's own step-000002 was not pruned".into());
                }
                e.p("r/checkpoints/step-000004")
                    .is_dir()
                    .then_some(())
                    .ok_or("step-000004 missing".into())
            },
        ),
    ]
}

/// More of the kind: other commands, other ways of pointing into the user's files.
fn more_cases() -> Vec<Case> {
    let user_file = |e: &Env| e.write("d/notes.txt", "mine");
    let kept = |e: &Env, _: &Out| {
        (e.read("d/notes.txt") == b"mine")
            .then_some(())
            .ok_or("d/notes.txt changed".to_string())
    };
    vec![
        fail(
            "own: diagnose --out a folder of the user's",
            user_file,
            "diagnose --model m --pairs pairs.jsonl --out d",
            &["--out d", "not empty", "notes.txt"],
        )
        .after(kept),
        fail(
            "own: eval --out a folder of the user's",
            user_file,
            "eval --model m --questions q.jsonl --out d",
            &["--out d", "not empty"],
        )
        .after(kept),
        fail(
            "own: make-data --out a folder of the user's",
            user_file,
            "make-data --model m --questions q.jsonl --out d",
            &["--out d", "not empty"],
        )
        .after(kept),
        fail(
            "own: tune --out a diagnose output",
            |e: &Env| {
                let o = e.run(&split("diagnose --model m --pairs pairs.jsonl --out d"));
                assert_eq!(o.code, Some(0), "{}", o.stderr);
            },
            &format!("{TUNE} --out d"),
            &["--out d", "pinpoint diagnose"],
        ),
        fail(
            "own: tune --out a link to a folder of the user's",
            |e: &Env| {
                e.write("d/notes.txt", "mine");
                std::os::unix::fs::symlink("d", e.p("lk")).unwrap();
            },
            &format!("{TUNE} --out lk"),
            &["--out lk", "not empty", "notes.txt"],
        )
        .after(kept),
        fail(
            "own: tune --out z/L/../sub2 lands inside the model",
            link_into_model,
            &format!("{TUNE} --out z/L/../sub2"),
            &["--out z/L/../sub2", "inside the input model"],
        ),
        fail(
            "own: import into a folder of the user's",
            user_file,
            "import t.gguf d",
            &["d", "not empty", "notes.txt"],
        )
        .after(kept),
        ok(
            "own: tune reruns into its own output",
            |e: &Env| {
                let o = e.run(&split(&format!("{TUNE} --out o")));
                assert_eq!(o.code, Some(0), "{}", o.stderr);
                std::fs::remove_dir_all(e.p("o/checkpoints")).unwrap();
            },
            &format!("{TUNE} --out o"),
            |e: &Env, _: &Out| {
                e.p("o/.pinpoint-output")
                    .is_file()
                    .then_some(())
                    .ok_or("no marker".into())
            },
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    super::concat([data_loss_cases(), more_cases()])
}
