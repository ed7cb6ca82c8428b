//! Short answers compared as words: the normal form both the judge and the question pool use.

/// Lower-case, punctuation to spaces, articles dropped, whitespace collapsed.
pub fn normalize(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Does `reply` contain one of `answers` (normalized, as whole words)?
pub fn short_answer_matches(reply: &str, answers: &[String]) -> bool {
    let r = format!(" {} ", normalize(reply));
    answers.iter().any(|a| {
        let n = normalize(a);
        !n.is_empty() && r.contains(&format!(" {n} "))
    })
}
