//! Concurrent writers: every command that writes a folder takes the folder's lock, so a
//! second run into it fails naming the folder and the holder instead of mixing outputs.
//! `bad_input_cli::concurrent_writers` runs these while holding the lock of `o/`.

use super::{fail, nothing, Case, TUNE};

pub fn cases() -> Vec<Case> {
    let held = |name: &str, args: &str| {
        fail(
            &format!("locked: {name}"),
            nothing,
            args,
            &["o", "in use by", "test holder", ".pinpoint.lock"],
        )
    };
    vec![
        held("diagnose", "diagnose --model m --pairs pairs.jsonl --out o"),
        held("eval", "eval --model m --questions q.jsonl --out o"),
        held("import", "import t.gguf o"),
        held(
            "attention",
            "attention --model m --pairs pairs.jsonl --heads heads.json --out o",
        ),
        held(
            "knockout",
            "knockout --model m --pairs pairs.jsonl --heads heads.json --out o",
        ),
        held(
            "make-data",
            "make-data --model m --questions q.jsonl --out o",
        ),
        held("profile", "profile forward --model m --out o"),
        held("tune", &format!("{TUNE} --out o")),
    ]
}
