//! Impossible sizes end in an error naming the flag or the item and the limit, before any
//! allocation: prompts, conversations and pairs past the tiny model's 64 positions, token
//! counts past the context, workloads past the memory, chat templates that grow without
//! end. Never an abort (134) or a run of minutes.

use super::{absent, fail, nothing, Case, Env, TUNE};

/// `n` words the fixture tokenizer knows, one token each.
fn words(n: usize) -> String {
    vec!["yes"; n].join(" ")
}

fn conv(q: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "yes ."}]})
        .to_string()
}

fn question(q: &str) -> String {
    serde_json::json!({"id": "long", "question": q, "answers": ["yes"]}).to_string()
}

fn pair(challenge: &str) -> String {
    let side = |t: &str| {
        serde_json::json!([{"role": "user", "content": "what is the capital of france ?"},
            {"role": "assistant", "content": "paris ."}, {"role": "user", "content": t}])
    };
    serde_json::json!({"reference": side(challenge), "counterfactual": side("are you sure ?")})
        .to_string()
}

/// The chat template of `m/tokenizer_config.json` set to `t`.
fn template(t: &'static str) -> impl Fn(&Env) {
    move |e: &Env| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&e.read("m/tokenizer_config.json")).unwrap();
        v["chat_template"] = t.into();
        e.write("m/tokenizer_config.json", v.to_string());
    }
}

/// Doubles a string 60 times: 2^61 bytes if nothing stops it.
const DOUBLING: &str = r#"{% set ns = namespace(s="ab") %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"#;
/// 10^10 iterations writing a character each.
const NESTED: &str =
    r#"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"#;
/// 10^10 iterations writing nothing.
const SILENT: &str =
    r#"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"#;
/// A string repeated past minijinja's own limit, then doubled.
const REPEATED: &str = r#"{% set ns = namespace(s="a" * 99999999) %}{% for i in range(8) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}"#;

fn contexts() -> Vec<Case> {
    let long = words(200_000);
    let long2 = long.clone();
    let long_conv = conv(&words(300));
    let long_q = question(&words(300));
    let long_q2 = long_q.clone();
    let long_pair = pair(&words(300));
    let long_pair2 = long_pair.clone();
    let history = serde_json::json!([{"role": "user", "content": words(500)},
        {"role": "assistant", "content": "yes"}])
    .to_string();
    vec![
        fail(
            "sizes: generate a 200,000-token prompt",
            move |e: &Env| e.write("long.txt", format!("{long}\n")),
            "generate --model m --file long.txt --max-new-tokens 4",
            &["--prompt \"yes yes", "200000 tokens", "context of 64"],
        ),
        fail(
            "sizes: logits of a 100-token prompt",
            nothing,
            &format!(
                "logits --model m --prompt {} --top 2 --out o.json",
                words(100).replace(' ', ",")
            ),
            &["--prompt", "context of 64"],
        )
        .after(absent("o.json")),
        fail(
            "sizes: chat with a long --history",
            move |e: &Env| e.write("h.json", &history),
            "chat --model m --history h.json yes --max-new-tokens 2",
            &["--history", "context of 64"],
        ),
        fail(
            "sizes: tune on a conversation past the context",
            move |e: &Env| e.write("train.jsonl", format!("{long_conv}\n")),
            &format!("{TUNE} --out o"),
            &["--data train.jsonl line 1", "context of 64", "--max-len 64"],
        )
        .after(absent("o/model.safetensors")),
        fail(
            "sizes: tune --max-len past the context",
            nothing,
            &format!("{TUNE} --out o --max-len 100"),
            &["--max-len 100", "at most 64"],
        ),
        fail(
            "sizes: eval a question past the context",
            move |e: &Env| e.write("q.jsonl", format!("{long_q}\n")),
            "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out ev --quiet",
            &["question \"yes yes", "context of 64"],
        ),
        fail(
            "sizes: make-data from a question past the context",
            move |e: &Env| e.write("q.jsonl", format!("{long_q2}\n")),
            "make-data --model m --short 0 --questions q.jsonl --out md --quiet",
            &["question \"yes yes", "context of 64"],
        )
        .after(absent("md/train.jsonl")),
        fail(
            "sizes: diagnose a pair past the context",
            move |e: &Env| e.write("pairs.jsonl", format!("{long_pair}\n")),
            "diagnose --model m --pairs pairs.jsonl --out dg",
            &[
                "pair #0",
                "--pairs pairs.jsonl",
                "reference",
                "context of 64",
            ],
        )
        .after(absent("dg/heads.json")),
        fail(
            "sizes: attention on a pair past the context",
            move |e: &Env| e.write("pairs.jsonl", format!("{long_pair2}\n")),
            "attention --model m --pairs pairs.jsonl --heads heads.json --out at",
            &["pair #0", "--pairs pairs.jsonl", "context of 64"],
        ),
        fail(
            "sizes: generate from two prompts, the second too long",
            move |e: &Env| e.write("p.txt", format!("yes\n{long2}\n")),
            "generate --model m --file p.txt --max-new-tokens 4",
            &["200000 tokens", "context of 64"],
        ),
    ]
}

fn counts() -> Vec<Case> {
    vec![
        fail(
            "sizes: --max-new-tokens near u64::MAX",
            nothing,
            "generate --model m --prompt yes --max-new-tokens 18446744073709551615",
            &["--max-new-tokens 18446744073709551615", "at most 64"],
        ),
        fail(
            "sizes: --max-new-tokens one past the context",
            nothing,
            "chat --model m yes --max-new-tokens 65",
            &["--max-new-tokens 65", "at most 64", "config.json"],
        ),
        fail(
            "sizes: bench --batch 1000000 --seq 1000000",
            nothing,
            "bench forward --model m --batch 1000000 --seq 1000000 --reps 1",
            &["--batch 1000000", "--seq 1000000", "GiB of memory", "available"],
        ),
        fail(
            "sizes: bench --batch and --seq past any count",
            nothing,
            "bench forward --model m --batch 18446744073709551615 --seq 18446744073709551615 --reps 1",
            &["--batch 18446744073709551615", "overflows"],
        ),
        fail(
            "sizes: bench decode --new-tokens past the memory",
            nothing,
            "bench decode --model m --batch 100000 --seq 8 --new-tokens 1000000000 --reps 1",
            &["--new-tokens 1000000000", "GiB of memory"],
        ),
        fail(
            "sizes: profile --batch 1000000 --seq 1000000",
            nothing,
            "profile forward --model m --batch 1000000 --seq 1000000 --out pr",
            &["profile --batch 1000000 --seq 1000000", "GiB of memory"],
        )
        .after(absent("pr")),
        fail(
            "sizes: bench --pairs past the memory",
            nothing,
            "bench patching --model m --pairs 1000000000000 --seq 64 --reps 1",
            &["bench --batch", "GiB of memory"],
        ),
    ]
}

fn templates() -> Vec<Case> {
    let logits = "logits --model m --chat --prompt yes --top 2 --out o.json";
    vec![
        fail(
            "sizes: a chat template that doubles a string 60 times",
            template(DOUBLING),
            logits,
            &["chat template", "tokenizer_config.json", "MiB"],
        )
        .after(absent("o.json")),
        fail(
            "sizes: a chat template with 10^10 iterations",
            template(NESTED),
            logits,
            &["chat template", "tokenizer_config.json"],
        ),
        fail(
            "sizes: a chat template looping 10^10 times silently",
            template(SILENT),
            logits,
            &[
                "chat template",
                "tokenizer_config.json",
                "loops without end",
            ],
        ),
        fail(
            "sizes: a doubling chat_template.jinja",
            |e: &Env| e.write("m/chat_template.jinja", DOUBLING),
            "chat --model m yes --max-new-tokens 2",
            &["chat_template.jinja", "MiB"],
        ),
        fail(
            "sizes: tune with a doubling template",
            template(DOUBLING),
            &format!("{TUNE} --out o"),
            &["tokenizer_config.json", "MiB"],
        )
        .after(absent("o/model.safetensors")),
        fail(
            "sizes: a repeated string doubled",
            template(REPEATED),
            logits,
            &["tokenizer_config.json", "MiB"],
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut c = contexts();
    c.extend(counts());
    c.extend(templates());
    c
}
