//! Resume trusts nothing it finds: an edited, truncated or swapped state, another base model
//! of the same shape or weights changed in place, other settings (each named with both
//! values), a damaged `checkpoints/latest`; and `pipeline --k` listing a variant twice.

use super::{fail, split, Case, Env};

const BASE: &str =
    "tune --model m --heads-list L0H0 --data train.jsonl --steps 4 --batch 1 --quiet";

/// A finished 4-step run in `r/` with checkpoints at steps 2 and 4.
fn prior(e: &Env) {
    let o = e.run(&split(&format!("{BASE} --out r --checkpoint-every 2")));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

fn resume() -> String {
    format!("{BASE} --out r --checkpoint-every 2 --resume")
}

const STATE: &str = "r/checkpoints/step-000004/tune_state.json";

/// `prior`, then `f` applied to the newest state's JSON text.
fn edited(f: fn(String) -> String) -> impl Fn(&Env) {
    move |e: &Env| {
        prior(e);
        let t = String::from_utf8(e.read(STATE)).unwrap();
        e.write(STATE, f(t));
    }
}

/// `prior`, then one value of the first tensor of `m/model.safetensors` changed in place.
fn flip_weight(e: &Env, rel: &str) {
    let mut b = e.read(rel);
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n + 1] ^= 0x10;
    e.write(rel, b);
}

fn state_cases() -> Vec<Case> {
    vec![
        fail(
            "resume: tune_state.json truncated",
            edited(|t| t[..t.len() / 2].to_string()),
            &resume(),
            &["tune_state.json", "edited or cut short"],
        ),
        fail(
            "resume: a history entry removed from tune_state.json",
            edited(|t| {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                let mut v = v;
                v["history"].as_array_mut().unwrap().pop();
                serde_json::to_string_pretty(&v).unwrap()
            }),
            &resume(),
            &["tune_state.json", "edited"],
        ),
        fail(
            "resume: step edited in tune_state.json",
            edited(|t| t.replacen("\"step\": 4", "\"step\": 3", 1)),
            &resume(),
            &["tune_state.json", "edited"],
        ),
        fail(
            "resume: data hash removed from tune_state.json",
            edited(|t| {
                let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
                v.as_object_mut().unwrap().remove("data_sha256");
                serde_json::to_string_pretty(&v).unwrap()
            }),
            &resume(),
            &["tune_state.json", "edited"],
        ),
        fail(
            "resume: the state of step 2 under the name step-000004",
            |e: &Env| {
                prior(e);
                let two = e.read("r/checkpoints/step-000002/tune_state.json");
                let st = e.read("r/checkpoints/step-000002/tune_state.safetensors");
                e.write(STATE, two);
                e.write("r/checkpoints/step-000004/tune_state.safetensors", st);
            },
            &resume(),
            &["step 2", "step-000004"],
        ),
        fail(
            "resume: tune_state.safetensors of another checkpoint",
            |e: &Env| {
                prior(e);
                let st = e.read("r/checkpoints/step-000002/tune_state.safetensors");
                e.write("r/checkpoints/step-000004/tune_state.safetensors", st);
            },
            &resume(),
            &["tune_state.json", "edited or cut short"],
        ),
        fail(
            "resume: checkpoints/latest is empty",
            |e: &Env| {
                prior(e);
                e.write("r/checkpoints/latest", "");
            },
            &resume(),
            &["checkpoints/latest", "is empty"],
        ),
        fail(
            "resume: checkpoints/latest names a user's folder",
            |e: &Env| {
                prior(e);
                std::fs::create_dir_all(e.p("r/checkpoints/mine")).unwrap();
                e.write("r/checkpoints/latest", "mine");
            },
            &resume(),
            &[
                "checkpoints/latest",
                "\"mine\"",
                "not a pinpoint checkpoint",
            ],
        ),
    ]
}

fn model_and_flag_cases() -> Vec<Case> {
    vec![
        fail(
            "resume: another base model of the same shape",
            |e: &Env| {
                prior(e);
                for f in ["config.json", "model.safetensors", "tokenizer.json"] {
                    e.write(&format!("m2/{f}"), e.read(&format!("m/{f}")));
                }
                e.write(
                    "m2/tokenizer_config.json",
                    e.read("m/tokenizer_config.json"),
                );
                flip_weight(e, "m2/model.safetensors");
            },
            &resume().replace("--model m", "--model m2"),
            &["--model m2", "other weights", "content digest"],
        ),
        fail(
            "resume: the base model's weights changed in place",
            |e: &Env| {
                prior(e);
                flip_weight(e, "m/model.safetensors");
            },
            &resume(),
            &["--model m", "other weights"],
        ),
        fail(
            "resume: --max-len changed",
            prior,
            &format!("{} --max-len 40", resume()),
            &["--max-len none in the checkpoint, 40 now"],
        ),
        fail(
            "resume: --micro-batch changed",
            |e: &Env| {
                let o = e.run(&split(&format!(
                    "{} --out r --checkpoint-every 2",
                    BASE.replace("--batch 1", "--batch 2")
                )));
                assert_eq!(o.code, Some(0), "{}", o.stderr);
            },
            &format!(
                "{} --micro-batch 1",
                resume().replace("--batch 1", "--batch 2")
            ),
            &["--micro-batch 0 in the checkpoint, 1 now"],
        ),
        fail(
            "resume: --seed changed",
            prior,
            &format!("{} --seed 7", resume()),
            &["--seed 0 in the checkpoint, 7 now"],
        ),
        fail(
            "resume: --weight-decay changed",
            prior,
            &format!("{} --weight-decay 0.5", resume()),
            &["--weight-decay 0.1 in the checkpoint, 0.5 now"],
        ),
        fail(
            "resume: --authors-decay added",
            prior,
            &format!("{} --authors-decay", resume()),
            &["--authors-decay false in the checkpoint, true now"],
        ),
        fail(
            "pipeline: --k 2,2",
            super::nothing,
            "pipeline --model m --k 2,2 --out p",
            &["--k 2,2", "listed twice"],
        ),
        fail(
            "pipeline: --k 1,2,1",
            super::nothing,
            "pipeline --model m --k 1,2,1 --out p",
            &["--k 1,2,1", "1 is listed twice", "entries 1 and 3"],
        ),
        fail(
            "pipeline: --k ' 3, 3'",
            super::nothing,
            "pipeline --model m --k 3,3 --baselines sft --out p",
            &["3 is listed twice"],
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    super::concat([state_cases(), model_and_flag_cases()])
}
