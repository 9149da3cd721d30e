//! One row of the agent loop: its conversation, its tool calls, and how it ended.

use lm::chat::Message;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The turn held `<answer>...</answer>` (its validity is the reward's business).
    Answer,
    /// The model ended its turn with neither an answer nor a tool call.
    NoAnswer,
    /// Another tool call after `max_turns` calls.
    MaxTurns,
    /// One turn sampled `max_new_tokens` without reaching a tool call or an answer.
    TurnTooLong,
    /// The conversation would exceed the context budget.
    ContextFull,
    /// The chat template could not append a tool message after this turn.
    TemplateError(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// The raw text between `<tool_call>` and `</tool_call>`.
    pub raw: String,
    pub name: Option<String>,
    pub arguments: Option<serde_json::Value>,
    /// False for malformed, unknown, badly-argued or duplicate calls.
    pub ok: bool,
    pub duplicate: bool,
    pub observation: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub episode: usize,
    pub sample: usize,
    pub messages: Vec<Message>,
    pub calls: Vec<CallRecord>,
    pub end: Option<EndReason>,
    /// Text of the final turn when it ended with an answer.
    pub answer_text: Option<String>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub forced_tokens: usize,
    pub seconds: f64,
    pub ids: Vec<i64>,
    pub mask: Vec<u8>,
    pub logprobs: Vec<f32>,
}

impl AgentRow {
    pub fn bad_calls(&self) -> usize {
        self.calls.iter().filter(|c| !c.ok).count()
    }
}
