//! The agent protocol (`../shared/PROTOCOL.md`) in one place: the tags, the assistant turns
//! (thinking, one tool call, or the answer), the tool-response wrapping, what a finished turn
//! asks for, and the answer's parsing. The agent loop, every teacher, SFT tokenization and
//! evaluation produce and read turns only through this module.
//!
//! Stored conversations (trajectories, SFT sets) hold tool messages in the protocol's text
//! form, `<tool_response>\n{observation}\n</tool_response>`. Chat templates that wrap tool
//! messages themselves (Qwen2.5, Qwen3) get the bare observation instead: [`ChatProtocol`]
//! decides that once from the template, so a teacher's conversation and a rollout of the same
//! turns are the same tokens under every template.

use crate::episode::EndReason;
use anyhow::{bail, Context, Result};
use lm::chat::{ChatTemplate, Message};
use lm::engine::StopReason;
use serde_json::Value;
use tools::ToolCall;

pub const THINK: (&str, &str) = ("<think>", "</think>");
pub const TOOL_CALL: (&str, &str) = ("<tool_call>", "</tool_call>");
pub const TOOL_RESPONSE: (&str, &str) = ("<tool_response>", "</tool_response>");
pub const ANSWER: (&str, &str) = ("<answer>", "</answer>");

/// Stop strings of an assistant turn: the end of a tool call or of the answer.
pub fn stops(use_tools: bool) -> Vec<String> {
    let mut s = vec![ANSWER.1.to_string()];
    if use_tools {
        s.insert(0, TOOL_CALL.1.to_string());
    }
    s
}

/// `<think>{reasoning}</think>\n{action}`; just the action when there is no reasoning.
/// Thinking tags inside the reasoning become line breaks, so the text around them cannot
/// join into a new tag (`<ans<think>wer>` stays two pieces).
pub fn with_thinking(reasoning: &str, action: &str) -> String {
    let r: Vec<&str> = reasoning
        .split(THINK.0)
        .flat_map(|s| s.split(THINK.1))
        .collect();
    let r = r.join("\n");
    let r = r.trim();
    if r.is_empty() {
        action.to_string()
    } else {
        format!("{}{r}{}\n{action}", THINK.0, THINK.1)
    }
}

/// `<tool_call>{"name": ..., "arguments": ...}</tool_call>`.
pub fn tool_call_block(name: &str, arguments: Value) -> String {
    format!(
        "{}{}{}",
        TOOL_CALL.0,
        ToolCall::new(name, arguments).text(),
        TOOL_CALL.1
    )
}

/// An assistant turn that reasons, then calls one tool.
pub fn call_turn(reasoning: &str, name: &str, arguments: Value) -> String {
    with_thinking(reasoning, &tool_call_block(name, arguments))
}

/// `<answer>3, 1, 2</answer>` from 1-based candidate indices.
pub fn answer_block(ranking: &[usize]) -> String {
    let list: Vec<String> = ranking.iter().map(|i| i.to_string()).collect();
    format!("{}{}{}", ANSWER.0, list.join(", "), ANSWER.1)
}

/// An assistant turn that reasons, then answers with a ranking (1-based indices).
pub fn answer_turn(reasoning: &str, ranking: &[usize]) -> String {
    with_thinking(reasoning, &answer_block(ranking))
}

/// A turn's text cut after its `<block>...</block>` (`block`: one of the tag pairs; the
/// first opening tag and the first closing tag after it, the block `classify` reads), with
/// any text before the block as its reasoning; other text is returned trimmed.
pub fn normalize_turn(turn: &str, block: (&str, &str)) -> String {
    let Some(p) = turn.find(block.0) else {
        return turn.trim().to_string();
    };
    let end = turn[p..]
        .find(block.1)
        .map_or(turn.len(), |e| p + e + block.1.len());
    with_thinking(&turn[..p], turn[p..end].trim())
}

/// The protocol's text form of a tool result.
pub fn tool_response(observation: &str) -> String {
    format!("{}\n{observation}\n{}", TOOL_RESPONSE.0, TOOL_RESPONSE.1)
}

/// The observation inside a tool message in the protocol's text form (the content itself
/// when it is not wrapped).
pub fn observation_of(content: &str) -> &str {
    content
        .strip_prefix(TOOL_RESPONSE.0)
        .and_then(|s| s.strip_suffix(TOOL_RESPONSE.1))
        .map(|s| s.strip_prefix('\n').unwrap_or(s))
        .map(|s| s.strip_suffix('\n').unwrap_or(s))
        .unwrap_or(content)
}

/// What a finished turn asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnAction {
    End(EndReason),
    /// The raw text between `<tool_call>` and `</tool_call>`, trimmed.
    Call(String),
}

/// Decides what a turn's text means (PROTOCOL.md "Assistant turns"): an answer ends the
/// episode; a tool call runs (unless `max_turns` calls were made); anything else ends it for
/// the reason the turn stopped.
pub fn classify(
    text: &str,
    reason: &StopReason,
    calls_so_far: usize,
    max_turns: usize,
) -> TurnAction {
    if let Some(start) = text.find(ANSWER.0) {
        if text[start..].contains(ANSWER.1) {
            return TurnAction::End(EndReason::Answer);
        }
    }
    if let Some(start) = text.find(TOOL_CALL.0) {
        let body = &text[start + TOOL_CALL.0.len()..];
        if let Some(end) = body.find(TOOL_CALL.1) {
            if calls_so_far >= max_turns {
                return TurnAction::End(EndReason::MaxTurns);
            }
            return TurnAction::Call(body[..end].trim().to_string());
        }
    }
    TurnAction::End(match reason {
        StopReason::MaxNewTokens => EndReason::TurnTooLong,
        StopReason::ContextFull => EndReason::ContextFull,
        _ => EndReason::NoAnswer,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AnswerError {
    NoAnswer,
    Empty,
    NotANumber(String),
    OutOfRange(i64),
    Duplicate(usize),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer => write!(f, "no {}...{}", ANSWER.0, ANSWER.1),
            Self::Empty => write!(f, "empty answer"),
            Self::NotANumber(s) => write!(f, "answer item `{s}` is not a candidate index"),
            Self::OutOfRange(i) => write!(f, "answer index {i} is out of range"),
            Self::Duplicate(i) => write!(f, "answer index {i} appears twice"),
        }
    }
}

/// The full ranking (1-based indices, length `n`) from the text of the final turn
/// (PROTOCOL.md "Answer parsing"): distinct, in-range indices, best first; missing indices
/// are appended in candidate order; duplicates, out-of-range indices or no answer make it
/// invalid.
pub fn parse_answer(text: &str, n: usize) -> Result<Vec<usize>, AnswerError> {
    let start = text.rfind(ANSWER.0).ok_or(AnswerError::NoAnswer)?;
    let body = &text[start + ANSWER.0.len()..];
    let body = body
        .find(ANSWER.1)
        .map(|e| &body[..e])
        .ok_or(AnswerError::NoAnswer)?;
    let mut seen = vec![false; n + 1];
    let mut order = Vec::new();
    for raw in body.split(|c: char| c == ',' || c == '>' || c.is_whitespace()) {
        let tok = raw
            .trim()
            .trim_matches(|c: char| c == '[' || c == ']' || c == '.' || c == '(' || c == ')');
        if tok.is_empty() {
            continue;
        }
        let i: i64 = tok
            .parse()
            .map_err(|_| AnswerError::NotANumber(tok.chars().take(20).collect()))?;
        if i < 1 || i as usize > n {
            return Err(AnswerError::OutOfRange(i));
        }
        let i = i as usize;
        if seen[i] {
            return Err(AnswerError::Duplicate(i));
        }
        seen[i] = true;
        order.push(i);
    }
    if order.is_empty() {
        return Err(AnswerError::Empty);
    }
    order.extend((1..=n).filter(|&i| !seen[i]));
    Ok(order)
}

/// The protocol as one chat template renders it: decided once per template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatProtocol {
    /// The template wraps tool messages in `<tool_response>` itself (Qwen2.5, Qwen3).
    pub template_wraps_tool_responses: bool,
}

/// Stands in for the assistant turn when the text after it is rendered: templates may
/// reformat an assistant's content (Qwen3 moves `<think>` blocks), never the marker.
const MARKER: &str = "\u{E000}recthinker-turn\u{E001}";

impl ChatProtocol {
    pub fn new(chat: &ChatTemplate) -> Self {
        let probe = [
            Message::user("u"),
            Message::assistant("a"),
            Message::tool("PROBE"),
        ];
        let wraps = chat
            .render(&probe, true, None)
            .map(|s| s.contains(TOOL_RESPONSE.0))
            .unwrap_or(false);
        Self {
            template_wraps_tool_responses: wraps,
        }
    }

    /// A stored message as the template must see it: tool messages in the protocol's text
    /// form lose their tags when the template adds them itself.
    pub fn for_template(&self, m: &Message) -> Message {
        if m.role == "tool" && self.template_wraps_tool_responses {
            Message::tool(observation_of(&m.content))
        } else {
            m.clone()
        }
    }

    /// Renders stored messages (the prompt of an episode) through the template.
    pub fn render(
        &self,
        chat: &ChatTemplate,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let shown: Vec<Message> = messages.iter().map(|m| self.for_template(m)).collect();
        chat.render(&shown, add_generation_prompt, None)
    }

    /// The text that follows an assistant turn when a tool message (`tool_content`, stored
    /// form) is appended, as the template renders it: end of turn, the tool message, the next
    /// assistant header. `messages` ends with that assistant turn. Only this text is ever
    /// tokenized; the generated turn never is.
    pub fn tool_suffix(
        &self,
        chat: &ChatTemplate,
        messages: &[Message],
        tool_content: &str,
    ) -> Result<String> {
        match messages.last() {
            Some(m) if m.role == "assistant" => {}
            _ => bail!("a tool message must follow an assistant turn"),
        }
        let mut shown: Vec<Message> = messages.iter().map(|m| self.for_template(m)).collect();
        if let Some(last) = shown.last_mut() {
            last.content = MARKER.to_string();
        }
        shown.push(self.for_template(&Message::tool(tool_content)));
        let after = chat.render(&shown, true, None)?;
        let end = after
            .rfind(MARKER)
            .map(|p| p + MARKER.len())
            .context("the template dropped the assistant turn")?;
        if after[..end].matches(MARKER).count() != 1 {
            bail!("the template repeats the assistant turn");
        }
        Ok(after[end..].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_completes() {
        assert_eq!(
            parse_answer("x <answer>3, 1, 2</answer>", 4),
            Ok(vec![3, 1, 2, 4])
        );
        assert_eq!(
            parse_answer("<answer>[2] [1]</answer>", 3),
            Ok(vec![2, 1, 3])
        );
        assert_eq!(
            parse_answer("<answer>1 > 2 > 3</answer>", 3),
            Ok(vec![1, 2, 3])
        );
    }

    #[test]
    fn invalid_answers() {
        assert_eq!(parse_answer("no tags", 10), Err(AnswerError::NoAnswer));
        assert_eq!(parse_answer("<answer>1, 2", 10), Err(AnswerError::NoAnswer));
        assert_eq!(
            parse_answer("<answer></answer>", 10),
            Err(AnswerError::Empty)
        );
        assert_eq!(
            parse_answer("<answer>1, 1</answer>", 10),
            Err(AnswerError::Duplicate(1))
        );
        assert_eq!(
            parse_answer("<answer>0, 1</answer>", 10),
            Err(AnswerError::OutOfRange(0))
        );
        assert_eq!(
            parse_answer("<answer>11</answer>", 10),
            Err(AnswerError::OutOfRange(11))
        );
        assert_eq!(
            parse_answer("<answer>Heat</answer>", 10),
            Err(AnswerError::NotANumber("Heat".into()))
        );
    }

    #[test]
    fn turns_round_trip() {
        let t = call_turn("why", "item_info", serde_json::json!({"candidate": 2}));
        assert_eq!(
            t,
            "<think>why</think>\n<tool_call>{\"arguments\":{\"candidate\":2},\"name\":\"item_info\"}</tool_call>"
        );
        match classify(&t, &StopReason::Eos, 0, 6) {
            TurnAction::Call(raw) => {
                let c = ToolCall::parse(&raw).unwrap();
                assert_eq!(c.name, "item_info");
            }
            other => panic!("{other:?}"),
        }
        let a = answer_turn("", &[3, 1, 2]);
        assert_eq!(a, "<answer>3, 1, 2</answer>");
        assert_eq!(parse_answer(&a, 3), Ok(vec![3, 1, 2]));
        assert_eq!(
            classify(&a, &StopReason::Eos, 0, 6),
            TurnAction::End(EndReason::Answer)
        );
        let wrapped = tool_response("obs\nline 2");
        assert_eq!(observation_of(&wrapped), "obs\nline 2");
        assert_eq!(observation_of("bare"), "bare");
        assert_eq!(
            normalize_turn("I think.\n<answer>1, 2</answer> trailing", ANSWER),
            "<think>I think.</think>\n<answer>1, 2</answer>"
        );
    }
}
