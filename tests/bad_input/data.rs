//! JSONL and JSON inputs: training data, diagnosis pairs, heads files and `--heads-list`.

use super::{absent, concat, fail, heads_json, nothing, ok, pair_line, Case, Env, Out, TUNE};

/// A valid training line; `{good}` in the texts below stands for it.
const GOOD: &str = r#"{"messages": [{"role": "user", "content": "are you sure ?"}, {"role": "assistant", "content": "yes ."}]}"#;

/// `bad.jsonl` with this text (`{good}` replaced by `GOOD`).
const LINES: &[(&str, &str, &[&str])] = &[
    ("empty file", "", &["bad.jsonl", "empty"]),
    ("blank lines", "\n\n  \n", &["bad.jsonl", "empty"]),
    ("not JSON", "{good}\nnot json\n", &["bad.jsonl:2"]),
    ("a list", "[]\n", &["bad.jsonl:1"]),
    ("no messages", "{}\n", &["bad.jsonl:1", "messages"]),
    (
        "messages a string",
        r#"{"messages": "hi"}"#,
        &["bad.jsonl:1"],
    ),
    (
        "role missing",
        r#"{"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        &["bad.jsonl:1"],
    ),
    (
        "content missing",
        r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}"#,
        &["bad.jsonl:1"],
    ),
    (
        "content a number",
        r#"{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "yo"}]}"#,
        &["bad.jsonl:1"],
    ),
    (
        "ends with user",
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        &["bad.jsonl:1", "assistant"],
    ),
    (
        "only assistant",
        r#"{"messages": [{"role": "assistant", "content": "hi"}]}"#,
        &["bad.jsonl:1", "prompt"],
    ),
    (
        "empty messages",
        r#"{"messages": []}"#,
        &["bad.jsonl:1", "no messages"],
    ),
    (
        "role null",
        r#"{"messages": [{"role": null, "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        &["bad.jsonl:1"],
    ),
    (
        "truncated line",
        r#"{"messages": [{"role": "user", "cont"#,
        &["bad.jsonl:1"],
    ),
    (
        "bad third line",
        "{good}\n{good}\n{\"messages\": 3}\n",
        &["bad.jsonl:3"],
    ),
    // A leading byte-order mark is skipped (issue 24): see flag_values.rs, "bom: ...".
    (
        "byte order mark before a bad line",
        "\u{feff}{\"messages\": 3}\n",
        &["bad.jsonl:1"],
    ),
    ("null line", "null\n", &["bad.jsonl:1"]),
    ("number line", "42\n", &["bad.jsonl:1"]),
];

/// `TUNE` training on `data`, into `o`.
fn tune_on(data: &str) -> String {
    format!(
        "{} --data {data} --out o",
        TUNE.replace(" --data train.jsonl", "")
    )
}

/// Where a tune writes its model, and a diagnosis its heads: absent after a failing run.
const TUNED: &str = "o/model.safetensors";
const DIAGNOSED: &str = "dg/heads.json";

/// A case whose setup writes `text` to `file`; the failing run must not write `out`.
fn written(
    name: String,
    file: &'static str,
    text: String,
    args: &str,
    needles: &[&str],
    out: &'static str,
) -> Case {
    fail(&name, move |e: &Env| e.write(file, &text), args, needles).after(absent(out))
}

fn pairs(name: &str, text: String, args: &str, needles: &[&str]) -> Case {
    written(
        format!("pairs: {name}"),
        "p.jsonl",
        text,
        args,
        needles,
        DIAGNOSED,
    )
}

fn heads(name: &str, text: String, args: &str, needles: &[&str]) -> Case {
    written(
        format!("heads: {name}"),
        "h.json",
        text,
        args,
        needles,
        TUNED,
    )
}

pub fn cases() -> Vec<Case> {
    concat([
        line_cases(),
        pair_cases(),
        heads_file_cases(),
        heads_list_cases(),
    ])
}

fn line_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = LINES
        .iter()
        .map(|&(name, text, needles)| {
            let text = text.replace("{good}", GOOD);
            let args = tune_on("bad.jsonl");
            written(
                format!("data: {name}"),
                "bad.jsonl",
                text,
                &args,
                needles,
                TUNED,
            )
        })
        .collect();
    cases.extend([
        fail(
            "data: invalid utf-8",
            |e: &Env| e.write("bad.jsonl", [0xffu8, 0xfe, b'{', b'\n']),
            &tune_on("bad.jsonl"),
            &["bad.jsonl"],
        ),
        fail(
            "data: a folder",
            |e: &Env| std::fs::create_dir(e.p("bad.jsonl")).unwrap(),
            &tune_on("bad.jsonl"),
            &["bad.jsonl", "directory"],
        ),
        fail(
            "data: missing",
            nothing,
            &tune_on("none.jsonl"),
            &["none.jsonl"],
        ),
        fail(
            "data: prompt over --max-len",
            nothing,
            &format!("{TUNE} --max-len 4 --out o"),
            &["line 1", "prompt"],
        ),
    ]);
    cases
}

/// Diagnosis pairs.
fn pair_cases() -> Vec<Case> {
    let diag = "diagnose --model m --pairs p.jsonl --out dg";
    vec![
        pairs(
            "identical",
            pair_line("are you sure ?", "are you sure ?") + "\n",
            diag,
            &["p.jsonl:1", "identical"],
        ),
        pairs(
            "identical second",
            format!(
                "{}\n{}\n",
                pair_line("i think that is wrong . are you sure ?", "are you sure ?"),
                pair_line("a", "a")
            ),
            diag,
            &["p.jsonl:2", "identical"],
        ),
        pairs(
            "no counterfactual",
            r#"{"reference": [{"role": "user", "content": "hi"}]}"#.into(),
            diag,
            &["p.jsonl:1"],
        ),
        pairs(
            "empty reference",
            r#"{"reference": [], "counterfactual": [{"role": "user", "content": "hi"}]}"#.into(),
            diag,
            &["p.jsonl:1", "empty"],
        ),
        pairs("not JSON", "{{{\n".into(), diag, &["p.jsonl:1"]),
        pairs("empty file", String::new(), diag, &["p.jsonl", "no pairs"]),
        pairs(
            "unequal lengths, all positions",
            pair_line("i think that is wrong . are you sure ?", "are you sure ?") + "\n",
            &format!("{diag} --positions all"),
            &["equal token length"],
        ),
        fail(
            "pairs: a folder",
            |e: &Env| std::fs::create_dir(e.p("pd")).unwrap(),
            "diagnose --model m --pairs pd --out dg",
            &["pd", "directory"],
        ),
        ok(
            "pairs: a good diagnosis",
            nothing,
            &diag.replace("p.jsonl", "pairs.jsonl"),
            |e: &Env, _: &Out| {
                e.p("dg/heads.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no heads.json".into())
            },
        ),
    ]
}

/// Heads files for tune --heads.
fn heads_file_cases() -> Vec<Case> {
    let th = "tune --model m --heads h.json --top-k 2 --data train.jsonl --steps 1 --batch 1 --quiet --out o";
    vec![
        heads("not JSON", "{".into(), th, &["h.json"]),
        heads(
            "other model",
            heads_json(&[-1.0, -0.5])
                .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 30"),
            th,
            &["h.json", "another model", "num_hidden_layers 30"],
        ),
        heads(
            "top-k past the list",
            heads_json(&[-1.0]),
            th,
            &["--top-k 2", "1 heads"],
        ),
        heads(
            "all zero scores",
            heads_json(&[0.0, 0.0, 0.0]),
            th,
            &["h.json", "score is 0"],
        ),
        heads(
            "layer out of range",
            heads_json(&[-1.0, -0.5]).replacen("\"layer\": 0", "\"layer\": 7", 1),
            th,
            &["L7H0", "does not exist"],
        ),
        heads(
            "duplicate head",
            heads_json(&[-1.0, -0.5]).replace("\"head\": 1", "\"head\": 0"),
            th,
            &["twice"],
        ),
        heads(
            "no heads field",
            r#"{"model": {"num_hidden_layers": 3, "num_attention_heads": 4}}"#.into(),
            th,
            &["h.json", "heads file"],
        ),
        heads("empty list", heads_json(&[]), th, &["--top-k 2"]),
        heads(
            "top-k 0",
            heads_json(&[-1.0]),
            &th.replace("--top-k 2", "--top-k 0"),
            &["--top-k 0"],
        ),
        heads(
            "no top-k",
            heads_json(&[-1.0]),
            &th.replace(" --top-k 2", ""),
            &["--top-k"],
        ),
        heads(
            "heads and list",
            heads_json(&[-1.0]),
            &format!("{th} --heads-list L0H0"),
            &["--heads"],
        ),
        fail(
            "heads: a folder",
            |e: &Env| std::fs::create_dir(e.p("h.json")).unwrap(),
            th,
            &["h.json", "directory"],
        ),
    ]
}

/// `TUNE` with `--heads-list list`.
fn heads_list(name: &str, list: &str, needles: &[&str]) -> Case {
    let args = TUNE
        .replace("L0H0", list)
        .replace("--quiet", "--quiet --out o");
    fail(name, nothing, &args, needles)
}

fn heads_list_cases() -> Vec<Case> {
    vec![
        heads_list(
            "heads-list: missing head",
            "L9H0",
            &["L9H0", "does not exist"],
        ),
        heads_list("heads-list: garbage", "3.5", &["--heads-list", "L3H5"]),
        heads_list("heads-list: twice", "L0H0,L0H0", &["twice"]),
        // TransformerLens hook names: an unknown hook lists the accepted forms; a known
        // one is checked against the model like a label.
        heads_list(
            "heads-list: unknown hook",
            "blocks.0.attn.hook_q[:,:,0]",
            &["--heads-list", "hook_q", "hook_pattern[:, {head}]"],
        ),
        heads_list(
            "heads-list: hook of a missing head",
            "blocks.0.attn.hook_z[:,:,99]",
            &["L0H99", "does not exist"],
        ),
        // attention and knockout take --heads-list too, instead of --heads.
        ok(
            "knockout: heads by TransformerLens names",
            nothing,
            "knockout --model m --pairs pairs.jsonl --max-k 2 --out ko --heads-list \
             L0H1,blocks.2.attn.hook_z[:,:,3],blocks.1.attn.hook_pattern[:,0]",
            |e: &Env, _: &Out| {
                let text =
                    std::fs::read_to_string(e.p("ko/knockout.json")).map_err(|e| e.to_string())?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| e.to_string())?;
                let ks: Vec<u64> = v["curve"]
                    .as_array()
                    .ok_or("no curve")?
                    .iter()
                    .filter_map(|p| p["k"].as_u64())
                    .collect();
                (ks == [0, 1, 2]).then_some(()).ok_or(format!("k {ks:?}"))
            },
        ),
        fail(
            "attention: --heads and --heads-list",
            nothing,
            "attention --model m --pairs pairs.jsonl --heads heads.json --heads-list L0H0 --out at",
            &["--heads-list"],
        ),
        fail(
            "attention: no heads",
            nothing,
            "attention --model m --pairs pairs.jsonl --out at",
            &["--heads"],
        ),
        fail(
            "attention: a missing head",
            nothing,
            "attention --model m --pairs pairs.jsonl --heads-list L5H0 --out at",
            &["L5H0", "does not exist"],
        ),
    ]
}
