//! One question of the evaluation or the training data, and its reference answer.

use crate::diagnose::pairs::{McQuestion, LETTERS};
use serde::{Deserialize, Serialize};

/// The reference answer of a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gold {
    /// Index of the correct choice.
    Choice(usize),
    /// Acceptable short answers (any one matches).
    Texts(Vec<String>),
}

/// One evaluation or training question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// Stable id ("mmlu:123", "arith:7+5", "file.jsonl:4"); splits are by id.
    pub id: String,
    pub question: String,
    /// Choices for multiple choice; empty for short answer.
    #[serde(default)]
    pub choices: Vec<String>,
    pub gold: Gold,
}

/// Instruction appended to short-answer questions.
pub const SHORT_INSTRUCTION: &str = "Answer in a few words.";

impl Question {
    pub fn is_mc(&self) -> bool {
        matches!(self.gold, Gold::Choice(_))
    }

    pub fn from_mc(q: &McQuestion) -> Self {
        Self {
            id: q.id.clone(),
            question: q.question.clone(),
            choices: q.choices.clone(),
            gold: Gold::Choice(q.answer),
        }
    }

    /// The first user turn: for multiple choice the paper's format (question, lettered
    /// choices, "Please answer just with the letter of the correct answer.").
    pub fn prompt(&self) -> String {
        match &self.gold {
            Gold::Choice(a) => McQuestion {
                id: self.id.clone(),
                question: self.question.clone(),
                choices: self.choices.clone(),
                answer: *a,
            }
            .prompt(),
            Gold::Texts(_) => format!("{} {SHORT_INSTRUCTION}", self.question.trim()),
        }
    }

    /// The correct answer as a model would write it: "(B) Paris" or "12".
    pub fn gold_text(&self) -> String {
        match &self.gold {
            Gold::Choice(a) => format!("({}) {}", LETTERS[*a], self.choices[*a].trim()),
            Gold::Texts(t) => t.first().cloned().unwrap_or_default(),
        }
    }
}
