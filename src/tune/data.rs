//! Training data: JSONL, one conversation a line, `{"messages": [{"role", "content"}, ...]}`.
//! The loss falls on the final assistant turn only: the tokens of the full conversation after
//! the prompt (every earlier message with the generation prompt added). A line with
//! `"loss": "retain"` is a retain example: its final turn is scored by KL(original ‖ tuned)
//! of the next-token distributions along it, so tuning keeps what the original model did
//! there; the default, `"loss": "ce"`, is cross-entropy on the reply's tokens.

use crate::model::tokenizer::{ChatMessage, Tokenizer};
use crate::train::TrainSeq;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// One conversation and the (1-based) line it came from.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub line: usize,
    pub messages: Vec<ChatMessage>,
    /// `"loss": "retain"`: keep the original model's distributions on the final turn.
    pub retain: bool,
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    loss: Option<String>,
}

/// Parse JSONL text. Blank lines are skipped; errors name the file and line.
pub fn parse_jsonl(text: &str, name: &str) -> Result<Vec<Conversation>> {
    let mut out = vec![];
    for (i, l) in text.lines().map(crate::util::strip_bom).enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(l)
            .with_context(|| format!("{name}:{line}: not a JSON object with \"messages\": [{{\"role\", \"content\"}}, ...]"))?;
        let retain = match parsed.loss.as_deref() {
            None | Some("ce") => false,
            Some("retain") => true,
            Some(other) => bail!(
                "{name}:{line}: \"loss\": {other:?} is not a loss; use \"ce\" (cross-entropy on the reply, the default) or \"retain\" (keep the original model's distributions on it)"
            ),
        };
        let msgs = parsed.messages;
        match msgs.last() {
            None => bail!("{name}:{line}: the conversation has no messages"),
            Some(m) if m.role != "assistant" => bail!(
                "{name}:{line}: the conversation does not end with an assistant turn (last role {:?}); the loss is on the final assistant reply",
                m.role
            ),
            _ => {}
        }
        if msgs.len() < 2 {
            bail!("{name}:{line}: the conversation has only the assistant reply; it needs a prompt before it");
        }
        out.push(Conversation {
            line,
            messages: msgs,
            retain,
        });
    }
    if out.is_empty() {
        bail!("{name}: no conversations (the file is empty)");
    }
    Ok(out)
}

/// Read a JSONL file of conversations.
pub fn read_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let text = crate::util::read_text(path)?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Build a training sequence from the prompt ids (all messages but the last, with the
/// generation prompt) and the full ids (all messages): targets are the full ids after the
/// prompt. `line` names the conversation in errors. `max_len` truncates the reply's end.
pub fn build_example(
    prompt: &[u32],
    full: &[u32],
    line: usize,
    max_len: Option<usize>,
) -> Result<TrainSeq> {
    if full.len() <= prompt.len() || full[..prompt.len()] != *prompt {
        let at = prompt
            .iter()
            .zip(full)
            .position(|(a, b)| a != b)
            .unwrap_or(prompt.len().min(full.len()));
        bail!(
            "line {line}: the tokens of the full conversation do not start with the tokens of its prompt (first difference at token {at}; prompt {} tokens, full {}); the chat template renders earlier turns differently once a reply follows",
            prompt.len(),
            full.len()
        );
    }
    let mut ids = full.to_vec();
    if let Some(m) = max_len {
        if prompt.len() >= m {
            bail!(
                "line {line}: the prompt alone has {} tokens, not below the limit of {m}",
                prompt.len()
            );
        }
        ids.truncate(m);
    }
    // logits at position t predict ids[t + 1]; targets are the reply tokens ids[p..].
    let p = prompt.len();
    let targets = (0..ids.len())
        .map(|t| {
            if t + 1 >= p && t + 1 < ids.len() {
                Some(ids[t + 1])
            } else {
                None
            }
        })
        .collect();
    Ok(TrainSeq::new(ids, targets))
}

/// Tokenise conversations with the model's chat template.
pub fn tokenize(
    tok: &Tokenizer,
    convs: &[Conversation],
    max_len: Option<usize>,
) -> Result<Vec<TrainSeq>> {
    convs
        .iter()
        .map(|c| {
            let n = c.messages.len();
            let prompt = tok
                .encode_chat(&c.messages[..n - 1], true)
                .with_context(|| format!("line {}: applying the chat template", c.line))?;
            let full = tok
                .encode_chat(&c.messages, false)
                .with_context(|| format!("line {}: applying the chat template", c.line))?;
            // Train up to the reply's end-of-turn token, not on template text after it
            // (ChatML's "\n" after <|im_end|>).
            let eos = tok.end_of_turn_ids();
            let mut full = full;
            if full.len() > prompt.len() {
                if let Some(i) = full[prompt.len()..].iter().rposition(|t| eos.contains(t)) {
                    full.truncate(prompt.len() + i + 1);
                }
            }
            let mut seq = build_example(&prompt, &full, c.line, max_len)?;
            seq.retain = c.retain;
            Ok(seq)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_reply_after_the_prompt() {
        let s = build_example(&[1, 5, 6, 9], &[1, 5, 6, 9, 20, 21, 2], 3, None).unwrap();
        assert_eq!(s.ids, vec![1, 5, 6, 9, 20, 21, 2]);
        assert_eq!(
            s.targets,
            vec![None, None, None, Some(20), Some(21), Some(2), None]
        );
        assert_eq!(s.n_targets(), 3);
        let s = build_example(&[1, 5], &[1, 5, 7, 8, 2], 1, Some(4)).unwrap();
        assert_eq!(s.targets, vec![None, Some(7), Some(8), None]);
    }

    #[test]
    fn a_prompt_that_is_no_prefix_is_an_error_naming_the_line() {
        let e = build_example(&[1, 5, 6], &[1, 5, 7, 9, 2], 12, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 12") && e.contains("token 2"), "{e}");
        assert!(build_example(&[1, 5], &[1, 5], 4, None).is_err());
        assert!(build_example(&[1, 5, 6], &[1, 5, 7], 4, Some(3)).is_err());
    }

    #[test]
    fn bad_files_name_the_line() {
        let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
        assert_eq!(
            parse_jsonl(&format!("\n{ok}\n\n{ok}\n"), "f").unwrap()[1].line,
            4
        );
        let e = parse_jsonl("", "t.jsonl").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_jsonl(&format!("{ok}\n{{not json"), "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.jsonl:2"), "{e}");
        let no_asst = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        let e = parse_jsonl(&format!("{ok}\n{ok}\n{no_asst}"), "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.jsonl:3") && e.contains("assistant"), "{e}");
    }
}
