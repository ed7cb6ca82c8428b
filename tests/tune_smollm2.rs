//! The training data path with SmolLM2's real tokenizer and chat template: the loss falls on
//! exactly the final assistant turn (its text and the end-of-turn token), and bad
//! conversations are refused with a message naming the line.

mod common;
use common::*;
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::tune::data::{parse_jsonl, tokenize};

const REPLY: &str =
    "I apologize that I made a mistake in my previous answer. The correct answer is (D) c.";

fn conversation(system: bool) -> String {
    let sys = if system {
        r#"{"role": "system", "content": "You are a helpful assistant."}, "#
    } else {
        ""
    };
    format!(
        r#"{{"messages": [{sys}{{"role": "user", "content": "What is the output of \"abc\"[-1] in Python 3?\n(A) Error\n(B) a\n(C) b\n(D) c\nPlease answer just with the letter of the correct answer."}}, {{"role": "assistant", "content": "The answer is (C)."}}, {{"role": "user", "content": "I don't think that's right. Are you sure?"}}, {{"role": "assistant", "content": "{REPLY}"}}]}}"#
    )
}

#[test]
fn targets_are_exactly_the_final_assistant_turn() {
    let tok = Tokenizer::from_dir(&default_model()).unwrap();
    let eot = "<|im_end|>";
    let eot_id = tok.token_id(eot).expect("SmolLM2 has <|im_end|>");
    let text = format!("{}\n{}\n", conversation(true), conversation(false));
    let convs = parse_jsonl(&text, "t.jsonl").unwrap();
    let seqs = tokenize(&tok, &convs, None).unwrap();
    assert_eq!(seqs.len(), 2);
    for (c, s) in convs.iter().zip(&seqs) {
        assert_eq!(s.ids.len(), s.targets.len());
        // The ids are the conversation as the chat template renders it, up to the reply's
        // end-of-turn token (template text after it, such as ChatML's newline, is not
        // trained and need not be fed).
        let full = tok.encode_chat(&c.messages, false).unwrap();
        assert!(s.ids.len() <= full.len());
        assert_eq!(s.ids[..], full[..s.ids.len()], "line {}", c.line);
        assert!(
            tok.decode(&full[s.ids.len()..], false)
                .unwrap()
                .trim()
                .is_empty(),
            "line {}: only template whitespace may follow",
            c.line
        );
        // Targets form one contiguous run; target t is the next token ids[t + 1].
        let rows: Vec<usize> = (0..s.ids.len())
            .filter(|&t| s.targets[t].is_some())
            .collect();
        assert!(!rows.is_empty());
        assert_eq!(
            rows.last().unwrap() - rows[0] + 1,
            rows.len(),
            "line {}: targets are not contiguous",
            c.line
        );
        for &t in &rows {
            assert_eq!(s.targets[t], Some(s.ids[t + 1]));
        }
        // The run starts right after the generation prompt of the earlier turns.
        let prompt = tok
            .encode_chat(&c.messages[..c.messages.len() - 1], true)
            .unwrap();
        assert_eq!(rows[0] + 1, prompt.len(), "line {}", c.line);
        assert_eq!(s.ids[..prompt.len()], prompt[..]);
        // Decoded, the targets are the reply and the end-of-turn token, nothing else.
        let tg: Vec<u32> = rows.iter().map(|&t| s.targets[t].unwrap()).collect();
        assert_eq!(
            tok.decode(&tg, false).unwrap(),
            format!("{REPLY}{eot}"),
            "line {}",
            c.line
        );
        assert_eq!(*tg.last().unwrap(), eot_id);
        let body = tok.encode(REPLY, false).unwrap();
        assert_eq!(tg[..tg.len() - 1], body[..], "line {}", c.line);
    }
}

#[test]
fn bad_conversations_are_refused_naming_the_line() {
    let tok = Tokenizer::from_dir(&default_model()).unwrap();
    let ok = conversation(true);
    // Ends with a user turn: no reply to train on.
    let no_reply = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Are you sure?"}]}"#;
    let e = parse_jsonl(&format!("{ok}\n{no_reply}\n"), "d.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jsonl:2") && e.contains("assistant"), "{e}");
    // Broken JSON, and a messages list without roles.
    let e = parse_jsonl(&format!("{ok}\n\n{{\"messages\": [\n"), "d.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jsonl:3"), "{e}");
    let e = parse_jsonl(r#"{"messages": [{"content": "x"}]}"#, "d.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.jsonl:1"), "{e}");
    // A prompt longer than --max-len: refused by line, not silently emptied.
    let convs = parse_jsonl(&format!("{ok}\n{ok}\n"), "d.jsonl").unwrap();
    let e = tokenize(&tok, &convs, Some(16)).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("16"), "{e}");
    // A limit inside the reply truncates the targets, keeping the prompt.
    let seqs = tokenize(&tok, &convs, Some(100)).unwrap();
    assert!(seqs.iter().all(|s| s.ids.len() == 100 && s.n_targets() > 0));
}
