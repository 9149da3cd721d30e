//! One choice's generated text as the API shows it: content streamed while it is safe to
//! show (never text that may still become a stop sequence or a tool call), then at the end
//! the content without the stop sequence, or the tool calls parsed from the model's
//! tool-call format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the
//! protocol's and Qwen's/Hermes' form) with `finish_reason: "tool_calls"`.

use lm::engine::StopReason;
use rollout::protocol::TOOL_CALL;
use serde_json::{json, Value};
use tools::ToolCall;

/// A parsed tool call, as a reply carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOut {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object (sent as a JSON string).
    pub arguments: Value,
}

impl CallOut {
    /// `{"id", "type": "function", "function": {"name", "arguments": "<json>"}}`.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "type": "function",
               "function": {"name": self.name, "arguments": self.arguments.to_string()}})
    }
}

/// How a choice ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    /// The whole content (None: only tool calls).
    pub content: Option<String>,
    /// Content not yet streamed.
    pub tail: String,
    pub tool_calls: Vec<CallOut>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

/// Tracks what of a choice's text was shown.
#[derive(Debug, Clone)]
pub struct ChoiceText {
    stops: Vec<String>,
    tools: bool,
    shown: usize,
}

impl ChoiceText {
    /// `stops`: the request's stop sequences; `tools`: tool calls are parsed.
    pub fn new(stops: Vec<String>, tools: bool) -> Self {
        Self {
            stops,
            tools,
            shown: 0,
        }
    }

    /// The content that became safe to show now that the turn's text is `text`.
    pub fn delta(&mut self, text: &str) -> Option<String> {
        let mut end = text.len() - self.held_back(text);
        if self.tools {
            if let Some(p) = text.find(TOOL_CALL.0) {
                end = end.min(p);
            }
        }
        if end <= self.shown || !text.is_char_boundary(end) {
            return None;
        }
        let d = text[self.shown..end].to_string();
        self.shown = end;
        Some(d)
    }

    /// The longest end of `text` that may still grow into a stop sequence (or a tool call).
    fn held_back(&self, text: &str) -> usize {
        let tag = self.tools.then_some(TOOL_CALL.0);
        let mut held = 0;
        for stop in self.stops.iter().map(String::as_str).chain(tag) {
            for (k, _) in stop.char_indices().skip(1) {
                if k > held && text.ends_with(&stop[..k]) {
                    held = k;
                }
            }
        }
        held
    }

    /// The end of the choice: `text` is the turn's text without an end-of-sequence token's
    /// text; `new_id` makes tool-call ids.
    pub fn finish(
        &mut self,
        text: &str,
        reason: &StopReason,
        mut new_id: impl FnMut() -> String,
    ) -> Final {
        let cut = self
            .stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let text = &text[..cut.unwrap_or(text.len())];
        if self.tools {
            if let Some((before, calls)) = parse_tool_calls(text) {
                let tail = before.get(self.shown..).unwrap_or_default().to_string();
                let content = (!before.trim().is_empty()).then(|| before.to_string());
                let tool_calls = calls
                    .into_iter()
                    .map(|c| CallOut {
                        id: new_id(),
                        name: c.name,
                        arguments: c.arguments,
                    })
                    .collect();
                return Final {
                    content,
                    tail,
                    tool_calls,
                    finish_reason: "tool_calls",
                };
            }
        }
        let finish_reason = match reason {
            StopReason::MaxNewTokens | StopReason::ContextFull if cut.is_none() => "length",
            _ => "stop",
        };
        Final {
            content: Some(text.to_string()),
            tail: text.get(self.shown..).unwrap_or_default().to_string(),
            tool_calls: Vec::new(),
            finish_reason,
        }
    }
}

/// The tool calls in `text`: every complete `<tool_call>...</tool_call>` block, each a JSON
/// object `{"name": ..., "arguments": {...}}` (`arguments` may be a JSON string, or
/// `parameters`) or a non-empty list of them (SmolLM2's form), and the text before the
/// first. None when there is no complete block or one does not parse: then the text is
/// plain content.
pub fn parse_tool_calls(text: &str) -> Option<(&str, Vec<ToolCall>)> {
    let (open, close) = TOOL_CALL;
    let first = text.find(open)?;
    let mut calls = Vec::new();
    let mut at = first;
    while let Some(p) = text[at..].find(open) {
        let body_start = at + p + open.len();
        let Some(e) = text[body_start..].find(close) else {
            break;
        };
        calls.extend(block_calls(&text[body_start..body_start + e])?);
        at = body_start + e + close.len();
    }
    (!calls.is_empty()).then_some((&text[..first], calls))
}

/// One block's calls: an object, or a non-empty JSON list of objects.
fn block_calls(body: &str) -> Option<Vec<ToolCall>> {
    let body = body.trim();
    if !body.starts_with('[') {
        return ToolCall::parse(body).ok().map(|c| vec![c]);
    }
    match serde_json::from_str::<Value>(body).ok()? {
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|c| ToolCall::parse(&c.to_string()).ok())
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("call_{n}")
        }
    }

    /// Streams `pieces` as successive turn texts and returns (shown deltas, final).
    fn run(stops: &[&str], tools: bool, pieces: &[&str], reason: StopReason) -> (String, Final) {
        let mut c = ChoiceText::new(stops.iter().map(|s| s.to_string()).collect(), tools);
        let mut text = String::new();
        let mut shown = String::new();
        for (k, p) in pieces.iter().enumerate() {
            text.push_str(p);
            // The engine stops the row in the step of the last piece: no delta then.
            if k + 1 < pieces.len() {
                if let Some(d) = c.delta(&text) {
                    shown.push_str(&d);
                }
            }
        }
        let f = c.finish(&text, &reason, ids());
        (shown, f)
    }

    #[test]
    fn parses_protocol_and_hermes_calls() {
        let (before, calls) =
            parse_tool_calls("<think>hm</think>\n<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>")
                .unwrap();
        assert_eq!(before, "<think>hm</think>\n");
        assert_eq!(calls, vec![ToolCall::new("f", json!({"a": 1}))]);
        let (_, calls) = parse_tool_calls(
            "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 2}\"}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"parameters\": {}}\n</tool_call>",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![
                ToolCall::new("f", json!({"a": 2})),
                ToolCall::new("g", json!({}))
            ]
        );
        let (_, calls) = parse_tool_calls(
            "<tool_call>[\n{\"name\": \"f\", \"arguments\": {\"a\": 1}},\n{\"name\": \"g\", \"arguments\": {}}\n]</tool_call>",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![
                ToolCall::new("f", json!({"a": 1})),
                ToolCall::new("g", json!({}))
            ]
        );
        assert_eq!(parse_tool_calls("<tool_call>[]</tool_call>"), None);
        assert_eq!(
            parse_tool_calls("<tool_call>[{\"name\": \"f\"}, 3]</tool_call>"),
            None
        );
        assert_eq!(parse_tool_calls("no call"), None);
        assert_eq!(parse_tool_calls("<tool_call>{\"name\": \"f\""), None);
        assert_eq!(parse_tool_calls("<tool_call>{broken}</tool_call>"), None);
        assert_eq!(
            parse_tool_calls("<tool_call>{\"arguments\": {}}</tool_call>"),
            None
        );
        assert_eq!(
            parse_tool_calls("<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>"),
            None
        );
    }

    #[test]
    fn a_tool_call_reply_is_held_back_and_parsed() {
        let (shown, f) = run(
            &[],
            true,
            &[
                "Let me ",
                "check.<tool",
                "_call>{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Paris\"}}</tool_call>",
            ],
            StopReason::StopString("</tool_call>".into()),
        );
        assert_eq!(shown, "Let me check.");
        assert_eq!(f.finish_reason, "tool_calls");
        assert_eq!(f.content.as_deref(), Some("Let me check."));
        assert_eq!(f.tail, "");
        assert_eq!(
            f.tool_calls[0].to_json(),
            json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}})
        );
        let (shown, f) = run(
            &[],
            true,
            &["<tool_call>{\"name\": \"f\"}</tool_call>"],
            StopReason::Eos,
        );
        assert_eq!(
            (shown.as_str(), f.content, f.finish_reason),
            ("", None, "tool_calls")
        );
    }

    #[test]
    fn a_broken_call_is_content() {
        let (shown, f) = run(
            &[],
            true,
            &["ok <tool_call>{\"name\": ", "oops}</tool_call>"],
            StopReason::StopString("</tool_call>".into()),
        );
        assert_eq!(shown, "ok ");
        assert_eq!(f.finish_reason, "stop");
        assert_eq!(
            f.content.as_deref(),
            Some("ok <tool_call>{\"name\": oops}</tool_call>")
        );
        assert_eq!(shown + &f.tail, f.content.unwrap());
        // Without tools offered, tags are plain text and stream as they come.
        let (shown, f) = run(
            &[],
            false,
            &["<tool_call>{\"name\": \"f\"}", "</tool_call>"],
            StopReason::Eos,
        );
        assert_eq!(shown, "<tool_call>{\"name\": \"f\"}");
        assert_eq!(f.tail, "</tool_call>");
        assert!(f.tool_calls.is_empty());
    }

    #[test]
    fn stop_sequences_are_never_shown() {
        let (shown, f) = run(
            &["END"],
            false,
            &["abc E", "N", "Dxyz"],
            StopReason::StopString("END".into()),
        );
        assert_eq!(shown, "abc ");
        assert_eq!(
            (f.content.as_deref(), f.tail.as_str(), f.finish_reason),
            (Some("abc "), "", "stop")
        );
        // A prefix that did not become the stop is shown once it cannot.
        let (shown, f) = run(
            &["END"],
            false,
            &["a E", "Nx", " b"],
            StopReason::MaxNewTokens,
        );
        assert_eq!(shown, "a ENx");
        assert_eq!((f.tail.as_str(), f.finish_reason), (" b", "length"));
        // The earliest of several stops wins; multi-byte text stays whole.
        let (shown, f) = run(
            &["日本", "zz"],
            false,
            &["x日", "本zz"],
            StopReason::StopString("zz".into()),
        );
        assert_eq!(shown + &f.tail, "x");
    }

    #[test]
    fn length_and_eos() {
        let (shown, f) = run(&[], false, &["a", "b"], StopReason::ContextFull);
        assert_eq!(
            (shown.as_str(), f.tail.as_str(), f.finish_reason),
            ("a", "b", "length")
        );
        // A call cut by the token limit is content.
        let (shown, f) = run(
            &[],
            true,
            &["a <tool", "_call>{\"name\"", ": \"f"],
            StopReason::MaxNewTokens,
        );
        assert_eq!(shown, "a ");
        assert_eq!(f.finish_reason, "length");
        assert_eq!(f.tail, "<tool_call>{\"name\": \"f");
    }
}
