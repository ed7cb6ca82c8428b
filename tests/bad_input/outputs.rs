//! Output locations: the input model, files, links, unwritable places, locked folders, and
//! symlinks that must be written through.

use super::{absent, fail, nothing, ok, split, Case, Env, Out, Want, TUNE};

fn link_to_model(e: &Env) {
    std::os::unix::fs::symlink("m", e.p("link")).unwrap()
}

fn dangling_link(e: &Env) {
    std::os::unix::fs::symlink("nowhere/x", e.p("dl")).unwrap()
}

fn make_d(e: &Env) {
    std::fs::create_dir(e.p("d")).unwrap()
}

/// (name, setup, the `--out` of `TUNE`, needles).
type TuneOut = (
    &'static str,
    fn(&Env),
    &'static str,
    &'static [&'static str],
);

const TUNE_OUTS: &[TuneOut] = &[
    ("is the model", nothing, "m", &["--out m", "input model"]),
    (
        "is the model, trailing slash",
        nothing,
        "./m/",
        &["--out ./m/", "input model"],
    ),
    (
        "is the model, dotdot",
        nothing,
        "m/../m",
        &["--out m/../m", "input model"],
    ),
    (
        "inside the model",
        nothing,
        "m/tuned",
        &["--out m/tuned", "inside"],
    ),
    ("contains the model", nothing, ".", &["--out .", "contains"]),
    (
        "a link to the model",
        link_to_model,
        "link",
        &["--out link", "input model"],
    ),
    (
        "an existing file",
        nothing,
        "train.jsonl",
        &["--out train.jsonl", "not a folder"],
    ),
    (
        "below a file",
        nothing,
        "train.jsonl/sub",
        &["train.jsonl/sub"],
    ),
    (
        "unwritable",
        nothing,
        "/proc/pinpoint-out",
        &["/proc/pinpoint-out"],
    ),
    (
        "a dangling link",
        dangling_link,
        "dl",
        &["--out dl", "link"],
    ),
];

/// (name, setup, args, needles, a path the failing run must not create).
type Row = (
    &'static str,
    fn(&Env),
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
);

/// Other commands' `--out`.
const OUTS: &[Row] = &[
    (
        "out: logits into the model",
        nothing,
        "logits --model m --prompt yes --out m/l.json",
        &["m/l.json", "inside"],
        Some("m/l.json"),
    ),
    (
        "out: logits over config.json",
        nothing,
        "logits --model m --prompt yes --out m/config.json",
        &["m/config.json", "inside"],
        None,
    ),
    (
        "out: logits to a folder",
        make_d,
        "logits --model m --prompt yes --out d",
        &["--out d", "is a folder"],
        None,
    ),
    (
        "out: logits unwritable",
        nothing,
        "logits --model m --prompt yes --out /proc/pinpoint/l.json",
        &["/proc/pinpoint/l.json"],
        None,
    ),
    (
        "out: logits to a full disk",
        nothing,
        "logits --model m --prompt yes --top-only --out /dev/full",
        &["/dev/full", "No space left"],
        None,
    ),
    (
        "out: diagnose to a file",
        nothing,
        "diagnose --model m --pairs pairs.jsonl --out train.jsonl",
        &["--out train.jsonl", "not a folder"],
        None,
    ),
    (
        "out: diagnose into the model",
        nothing,
        "diagnose --model m --pairs pairs.jsonl --out m",
        &["--out m", "input model"],
        None,
    ),
    (
        "out: diagnose unwritable",
        nothing,
        "diagnose --model m --pairs pairs.jsonl --out /proc/pinpoint-dg",
        &["/proc/pinpoint-dg"],
        None,
    ),
    (
        "out: eval into the model",
        nothing,
        "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out m/ev --quiet",
        &["--out m/ev", "inside"],
        None,
    ),
    (
        "out: eval to a file",
        nothing,
        "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out train.jsonl --quiet",
        &["--out train.jsonl"],
        None,
    ),
    (
        "out: make-data into the model",
        nothing,
        "make-data --model m --short 0 --questions q.jsonl --out m --quiet",
        &["--out m", "input model"],
        None,
    ),
    (
        "out: attention into the model",
        nothing,
        "attention --model m --pairs pairs.jsonl --heads heads.json --out m/at",
        &["--out m/at"],
        None,
    ),
    (
        "out: knockout to a file",
        nothing,
        "knockout --model m --pairs pairs.jsonl --heads heads.json --out train.jsonl",
        &["--out train.jsonl"],
        None,
    ),
    (
        "out: kl into the base",
        nothing,
        "kl --base m --tuned m --out m/kl.json",
        &["m/kl.json", "inside"],
        None,
    ),
    (
        "out: pipeline into the model",
        nothing,
        "pipeline --model m --out m/run --quiet",
        &["--out m/run", "inside"],
        None,
    ),
    (
        "out: pipeline to a file",
        nothing,
        "pipeline --model m --out train.jsonl --quiet",
        &["--out train.jsonl"],
        None,
    ),
    (
        "out: bench to a folder",
        make_d,
        "bench forward --model m --out d",
        &["--out d"],
        None,
    ),
];

pub fn cases() -> Vec<Case> {
    let mut cases = tune_cases();
    cases.extend(OUTS.iter().map(|&(name, setup, args, needles, after)| {
        let case = fail(name, setup, args, needles);
        match after {
            Some(rel) => case.after(absent(rel)),
            None => case,
        }
    }));
    // A second run into a folder that another run holds.
    cases.push(Case {
        name: "out: tune into a locked folder".into(),
        setup: Box::new(|_| {}),
        args: split(&format!("{TUNE} --out o")),
        want: Want::Fail(vec!["--out o".into(), "in use".into()]),
        after: None,
    });
    cases.extend(symlink_cases());
    cases
}

fn tune_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = TUNE_OUTS
        .iter()
        .map(|&(name, setup, out, needles)| {
            fail(
                &format!("out: tune {name}"),
                setup,
                &format!("{TUNE} --out {out}"),
                needles,
            )
        })
        .collect();
    cases.push(fail(
        "out: tune with checkpoints, no --resume",
        |e: &Env| {
            e.write("o/checkpoints/latest", "step-000001");
            e.write("o/.pinpoint-output", r#"{"command": "tune"}"#);
            std::fs::create_dir_all(e.p("o/checkpoints/step-000001")).unwrap();
        },
        &format!("{TUNE} --out o"),
        &["o", "--resume"],
    ));
    cases
}

/// `link` is still a symlink and `target` was written through it.
fn written_through(
    link: &'static str,
    target: &'static str,
) -> impl Fn(&Env, &Out) -> Result<(), String> {
    move |e: &Env, _: &Out| {
        let m = std::fs::symlink_metadata(e.p(link)).map_err(|x| x.to_string())?;
        (m.file_type().is_symlink() && e.p(target).is_file())
            .then_some(())
            .ok_or("not written through".into())
    }
}

/// Symlinks are written through, never replaced.
fn symlink_cases() -> Vec<Case> {
    vec![
        ok(
            "out: logits through a symlink",
            |e: &Env| std::os::unix::fs::symlink("real.json", e.p("link.json")).unwrap(),
            "logits --model m --prompt yes --top-only --out link.json",
            |e: &Env, _: &Out| {
                let m = std::fs::symlink_metadata(e.p("link.json")).map_err(|x| x.to_string())?;
                if !m.file_type().is_symlink() {
                    return Err("link.json was replaced".into());
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&e.read("real.json")).map_err(|x| x.to_string())?;
                v.get("prompts")
                    .map(|_| ())
                    .ok_or("real.json lacks prompts".into())
            },
        ),
        ok(
            "out: logits through a dangling symlink",
            |e: &Env| std::os::unix::fs::symlink("sub/new.json", e.p("link.json")).unwrap(),
            "logits --model m --prompt yes --top-only --out link.json",
            written_through("link.json", "sub/new.json"),
        ),
        ok(
            "out: tune into a symlinked folder",
            |e: &Env| {
                std::fs::create_dir(e.p("real")).unwrap();
                std::os::unix::fs::symlink("real", e.p("lnk")).unwrap();
            },
            &format!("{TUNE} --out lnk"),
            written_through("lnk", "real/model.safetensors"),
        ),
    ]
}
