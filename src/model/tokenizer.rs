//! (placeholder until the tokenizer branch lands)
#![allow(dead_code, unused_variables)]
use anyhow::{bail, Result};
use std::path::Path;
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}
impl ChatMessage {
    pub fn user(s: &str) -> Self {
        Self {
            role: "user".into(),
            content: s.into(),
        }
    }
    pub fn system(s: &str) -> Self {
        Self {
            role: "system".into(),
            content: s.into(),
        }
    }
    pub fn assistant(s: &str) -> Self {
        Self {
            role: "assistant".into(),
            content: s.into(),
        }
    }
}
pub struct Tokenizer;
impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        bail!("todo")
    }
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        bail!("todo")
    }
    pub fn decode(&self, ids: &[u32], skip: bool) -> Result<String> {
        bail!("todo")
    }
    pub fn apply_chat_template(&self, m: &[ChatMessage], g: bool) -> Result<String> {
        bail!("todo")
    }
    pub fn encode_chat(&self, m: &[ChatMessage], g: bool) -> Result<Vec<u32>> {
        bail!("todo")
    }
    pub fn eos_token_ids(&self) -> Vec<u32> {
        vec![]
    }
}
pub struct StreamDecoder;
impl StreamDecoder {
    pub fn new(t: &Tokenizer, skip: bool) -> Self {
        Self
    }
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        Ok(None)
    }
}
