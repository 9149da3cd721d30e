//! The checkpoint's tokenizer (`tokenizer.json`) plus what `tokenizer_config.json` and
//! `generation_config.json` say about special tokens and stopping.

use crate::config::token_id_list;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Ids that end generation: config.json, generation_config.json and the eos token.
    pub eos_ids: Vec<i64>,
    /// The raw `tokenizer_config.json` (empty object when absent).
    pub config: Value,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("parsing {} as JSON", path.display()))?;
    Ok(Some(v))
}

/// Special tokens are either a string or `{"content": ...}` in tokenizer_config.json.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    pub fn from_dir(dir: &Path, model_eos: &[i64]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let bos_token = token_string(config.get("bos_token"));
        let eos_token = token_string(config.get("eos_token"));
        let mut eos_ids: Vec<i64> = model_eos.to_vec();
        eos_ids.extend(token_id_list(generation.get("eos_token_id")));
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id as i64);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            bos_token,
            eos_token,
            eos_ids,
            config,
        })
    }

    /// Token ids of `text`. `add_special_tokens` applies the tokenizer's own post-processor
    /// (e.g. a BOS for Llama 3), exactly as `transformers` does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing text: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding tokens: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(|i| i as i64)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The `chat_template` of tokenizer_config.json or of a `chat_template.jinja` file.
    pub fn chat_template(&self, dir: &Path) -> Result<Option<String>> {
        let file = dir.join("chat_template.jinja");
        if file.exists() {
            return std::fs::read_to_string(&file)
                .map(Some)
                .with_context(|| format!("reading {}", file.display()));
        }
        Ok(match self.config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        })
    }
}

/// Incremental detokenization that never re-tokenizes: appends the text of new ids by
/// decoding a short window (the prefix/read offset scheme of HF text-generation-inference),
/// so multi-byte characters split across tokens come out whole.
#[derive(Default, Clone)]
pub struct TextStream {
    pub text: String,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    /// Call after ids were appended to `ids`; returns the newly finished text.
    pub fn push(&mut self, tok: &Tokenizer, ids: &[i64]) -> Result<String> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset], false)?;
        let full = tok.decode(&ids[self.prefix_offset..], false)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.text.push_str(&new);
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Restart the window at the current end (after forced tokens were appended).
    pub fn reset_at(&mut self, len: usize) {
        self.prefix_offset = len;
        self.read_offset = len;
        self.text.clear();
    }
}
