//! Tokenizer and chat templates against transformers (see scripts/make_tokenizer_fixtures.py).

mod common;
use common::default_model;
use pinpoint::model::gguf::import_gguf;
use pinpoint::model::tokenizer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use std::path::Path;

fn fixture(p: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn smol() -> Tokenizer {
    Tokenizer::from_dir(&default_model()).unwrap()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn smollm2_encode_decode_match_transformers() {
    let tok = smol();
    let fx = fixture("tokenizer/smollm2.json");
    for case in fx["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "encode {text:?}"
        );
        let with = ids(&case["ids_with_special"]);
        assert_eq!(
            tok.encode(text, true).unwrap(),
            with,
            "encode+special {text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode skip {text:?}"
        );
    }
    for (w, id) in fx["first_token_of_word"].as_object().unwrap() {
        assert_eq!(
            tok.first_token_of_word(w).unwrap() as u64,
            id.as_u64().unwrap(),
            "{w:?}"
        );
    }
    assert!(tok.first_token_of_word("").is_err());
    assert_eq!(tok.special_token("bos_token"), fx["bos_token"].as_str());
    assert_eq!(tok.special_token("eos_token"), fx["eos_token"].as_str());
    assert_eq!(
        tok.bos_token_id().map(u64::from),
        fx["bos_token_id"].as_u64()
    );
    assert_eq!(
        tok.eos_token_ids(),
        vec![fx["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    let tok = smol();
    let fx = fixture("tokenizer/smollm2.json");
    let chats = fx["chats"].as_array().unwrap();
    assert!(chats.len() >= 10);
    for c in chats {
        let msgs = messages(&c["messages"]);
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&msgs, gen).unwrap();
        assert_eq!(
            text,
            c["text"].as_str().unwrap(),
            "render {msgs:?} gen={gen}"
        );
        assert_eq!(
            tok.encode_chat(&msgs, gen).unwrap(),
            ids(&c["ids"]),
            "ids {msgs:?} gen={gen}"
        );
    }
}

/// A tokenizer dir with the tiny GGUF's tokenizer.json and a given template and specials.
fn dir_with_template(template: &str, special: &Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/tiny.gguf");
    import_gguf(&gguf, d.path(), false).unwrap();
    let mut cfg = special.clone();
    cfg["chat_template"] = json!(template);
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    d
}

#[test]
fn llama2_mistral_and_jinja_features_render_like_transformers() {
    let fx = fixture("tokenizer/templates.json");
    let mut dirs = std::collections::HashMap::new();
    for (name, t) in fx["templates"].as_object().unwrap() {
        dirs.insert(
            name.clone(),
            dir_with_template(t.as_str().unwrap(), &fx["special_tokens"]),
        );
    }
    let mut n = 0;
    for c in fx["cases"].as_array().unwrap() {
        let name = c["template"].as_str().unwrap();
        let tok = Tokenizer::from_dir(dirs[name].path()).unwrap();
        let msgs = messages(&c["messages"]);
        let gen = c["add_generation_prompt"].as_bool().unwrap();
        let got = tok.apply_chat_template(&msgs, gen);
        match (c.get("text"), c.get("error")) {
            (Some(t), _) => assert_eq!(
                got.unwrap(),
                t.as_str().unwrap(),
                "{name} {msgs:?} gen={gen}"
            ),
            (_, Some(e)) => {
                let err = format!("{:#}", got.unwrap_err());
                assert!(err.contains(e.as_str().unwrap()), "{name}: {err}");
            }
            _ => unreachable!(),
        }
        n += 1;
    }
    assert!(n >= 20);
    // The Llama-2 system message case is covered.
    assert!(fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["template"] == "llama2"
            && c["text"].as_str().is_some_and(|t| t.contains("<<SYS>>"))));
}

#[test]
fn chat_template_from_list_and_object_tokens() {
    let special = json!({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"});
    let d = dir_with_template("", &special);
    let cfg = json!({
        "bos_token": {"content": "<s>"},
        "eos_token": {"content": "</s>"},
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}
        ]
    });
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    let out = tok
        .apply_chat_template(
            &[ChatMessage::user("hi"), ChatMessage::assistant("yo")],
            false,
        )
        .unwrap();
    assert_eq!(out, "<s>hi</s>yo</s>");
    // chat_template.jinja wins over tokenizer_config.json, as in transformers v5.
    std::fs::write(
        d.path().join("chat_template.jinja"),
        "J{{ messages[0].role }}",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    assert_eq!(
        tok.apply_chat_template(&[ChatMessage::system("s")], true)
            .unwrap(),
        "Jsystem"
    );
}

#[test]
fn no_chat_template_is_a_clear_error() {
    let d = dir_with_template("", &json!({}));
    std::fs::write(d.path().join("tokenizer_config.json"), "{}").unwrap();
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    let e = tok
        .apply_chat_template(&[ChatMessage::user("x")], true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let d = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(d.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains(&d.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn stream_decoder_reproduces_decode_on_multibyte_text() {
    let tok = smol();
    let text = "Café 🙂 日本語 👨‍👩‍👧 and ½ — done.";
    let ids = tok.encode(text, false).unwrap();
    let mut dec = tok.stream_decoder(false);
    let mut out = String::new();
    let mut held_back = false;
    for &i in &ids {
        let piece = dec.push(i).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "piece {piece:?} has a broken character"
        );
        held_back |= piece.is_empty();
        out.push_str(&piece);
    }
    out.push_str(&dec.finish().unwrap());
    assert_eq!(out, tok.decode(&ids, false).unwrap());
    assert_eq!(out, text);
    assert!(held_back, "the emoji should span several byte-level tokens");
}

/// Llama-3.1, Qwen2.5 and Mistral v0.3: tiny tokenizers with each family's special tokens
/// and released chat template (scripts/make_tokenizer_fixtures.py); the rendered text and
/// token ids equal transformers' `apply_chat_template` on the same messages.
#[test]
fn llama3_qwen25_mistral_v03_chat_ids_match_transformers() {
    let mut n = 0;
    for (family, format, eot) in [
        ("llama3", "llama3", "<|eot_id|>"),
        ("qwen25", "qwen", "<|im_end|>"),
        ("mistral-v03", "mistral-control", "</s>"),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tokenizer")
            .join(family);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let fx = fixture(&format!("tokenizer/{family}/chats.json"));
        assert_eq!(
            tok.vocab_size(),
            fx["vocab_size"].as_u64().unwrap() as usize
        );
        assert_eq!(tok.chat_format(), format, "{family}");
        for (t, id) in fx["special_ids"].as_object().unwrap() {
            assert_eq!(
                tok.token_id(t),
                Some(id.as_u64().unwrap() as u32),
                "{family} {t}"
            );
        }
        for t in fx["texts"].as_array().unwrap() {
            let text = t["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&t["ids"]),
                "{family} {text:?}"
            );
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&t["ids_with_special"]),
                "{family} {text:?} with special tokens"
            );
        }
        for (w, id) in fx["first_token_of_word"].as_object().unwrap() {
            assert_eq!(
                tok.first_token_of_word(w).unwrap(),
                id.as_u64().unwrap() as u32,
                "{family} {w:?}"
            );
        }
        for c in fx["chats"].as_array().unwrap() {
            let msgs = messages(&c["messages"]);
            let gen = c["add_generation_prompt"].as_bool().unwrap();
            match (c.get("text"), c.get("error")) {
                (Some(t), _) => {
                    let text = tok.apply_chat_template(&msgs, gen).unwrap();
                    assert_eq!(text, t.as_str().unwrap(), "{family} {msgs:?} gen={gen}");
                    assert_eq!(
                        tok.encode_chat(&msgs, gen).unwrap(),
                        ids(&c["ids"]),
                        "{family} {msgs:?} gen={gen}"
                    );
                    n += 1;
                }
                (_, Some(e)) => {
                    let err = format!("{:#}", tok.apply_chat_template(&msgs, gen).unwrap_err());
                    assert!(err.contains(e.as_str().unwrap()), "{family}: {err}");
                }
                _ => unreachable!(),
            }
        }
        // The end-of-turn token ends generation and the loss mask.
        let eot_id = tok.token_id(eot).unwrap();
        assert!(tok.end_of_turn_ids().contains(&eot_id), "{family}");
        let conv = pinpoint::tune::data::Conversation {
            line: 1,
            messages: vec![
                ChatMessage::user("What is 2 + 2?"),
                ChatMessage::assistant("2 + 2 = 4."),
            ],
            retain: false,
        };
        let seq = pinpoint::tune::data::tokenize(&tok, std::slice::from_ref(&conv), None)
            .unwrap()
            .remove(0);
        let prompt = tok.encode_chat(&conv.messages[..1], true).unwrap();
        let reply: Vec<u32> = seq.targets.iter().flatten().copied().collect();
        assert_eq!(seq.ids[..prompt.len()], prompt[..], "{family}: the prompt");
        assert_eq!(
            reply.last(),
            Some(&eot_id),
            "{family}: the reply ends with its end-of-turn token, nothing after"
        );
        assert_eq!(
            reply.len(),
            seq.ids.len() - prompt.len(),
            "{family}: every reply token is a target"
        );
    }
    assert!(n >= 30, "{n} chats compared");
}

/// Llama-3's base tokenizer names `<|end_of_text|>` as eos; `<|eot_id|>` still ends a turn.
#[test]
fn eot_ends_a_turn_when_eos_is_end_of_text() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/llama3");
    let d = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "chat_template.jinja"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}).to_string(),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(d.path()).unwrap();
    let ids = tok.end_of_turn_ids();
    assert_eq!(ids[0], tok.token_id("<|end_of_text|>").unwrap());
    assert!(ids.contains(&tok.token_id("<|eot_id|>").unwrap()));
    assert_eq!(tok.eos_token_ids(), vec![ids[0]]);
}
