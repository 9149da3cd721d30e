//! A request's messages and tools as prompt tokens, through the model's own chat template.
//!
//! What a template understands is probed once at start: whether it renders `tools` (Qwen2.5,
//! Qwen3 and Llama 3.x do; SmolLM2's does not) and whether it renders an assistant message's
//! `tool_calls`. What it understands is passed as transformers passes it (so the prompt is
//! the one `apply_chat_template` makes); what it does not is written into the text in the
//! protocol's form (`rollout::protocol`): tools as a system-prompt section that asks for
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, an assistant's calls as those
//! blocks in its content. Tool results are wrapped in `<tool_response>` unless the template
//! wraps them itself (`ChatProtocol`), as in the agent loop.

use super::api::{ApiError, ChatMessage, ChatRequest};
use lm::chat::{ChatTemplate, Message};
use lm::tokenizer::Tokenizer;
use rollout::protocol::{self, ChatProtocol};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub struct Prompter {
    pub tok: Arc<Tokenizer>,
    chat: ChatTemplate,
    proto: ChatProtocol,
    /// The template renders the `tools` variable.
    pub native_tools: bool,
    /// The template renders assistant messages' `tool_calls`.
    pub native_tool_calls: bool,
}

const PROBE: &str = "recthinker_probe_fn";

impl Prompter {
    pub fn new(tok: Arc<Tokenizer>, chat: ChatTemplate) -> Self {
        let none = Map::new();
        let user = json!({"role": "user", "content": "u"});
        let tool = json!([{"type": "function", "function": {"name": PROBE, "description": "d", "parameters": {"type": "object", "properties": {}}}}]);
        let native_tools = chat
            .render_json(std::slice::from_ref(&user), true, Some(&tool), &none)
            .is_ok_and(|s| s.contains(PROBE));
        let call = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": PROBE, "arguments": {}}}]});
        let native_tool_calls = chat
            .render_json(&[user, call], false, None, &none)
            .is_ok_and(|s| s.contains(PROBE));
        let proto = ChatProtocol::new(&chat);
        Self {
            tok,
            chat,
            proto,
            native_tools,
            native_tool_calls,
        }
    }

    /// The prompt text (ending with the assistant header).
    pub fn render(&self, req: &ChatRequest) -> Result<String, ApiError> {
        let mut messages: Vec<Value> = req.messages.iter().map(|m| self.message(m)).collect();
        let tools = if req.tools.is_empty() {
            None
        } else if self.native_tools {
            Some(Value::Array(req.tools.clone()))
        } else {
            let section = tools_section(&req.tools);
            match messages.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let text = first["content"].as_str().unwrap_or_default();
                    first["content"] = json!(format!("{text}\n\n{section}"));
                }
                _ => messages.insert(0, json!({"role": "system", "content": section})),
            }
            None
        };
        self.chat
            .render_json(&messages, true, tools.as_ref(), &Map::new())
            .map_err(|e| {
                ApiError::invalid(
                    "messages",
                    format!("the model's chat template refused these messages: {e:#}"),
                )
            })
    }

    /// The prompt's token ids (the rendered template holds any BOS it wants).
    pub fn prompt_ids(&self, req: &ChatRequest) -> Result<Vec<i64>, ApiError> {
        let text = self.render(req)?;
        self.tok
            .encode(&text, false)
            .map_err(|e| ApiError::server(500, format!("tokenizing the prompt: {e:#}")))
    }

    /// One message as the template sees it.
    fn message(&self, m: &ChatMessage) -> Value {
        let mut content = m.content.clone();
        if m.role == "tool" {
            let stored = protocol::tool_response(content.as_deref().unwrap_or_default());
            content = Some(self.proto.for_template(&Message::tool(stored)).content);
        }
        let mut out = json!({"role": m.role});
        if !m.tool_calls.is_empty() {
            if self.native_tool_calls {
                out["tool_calls"] = Value::Array(
                    m.tool_calls
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            json!({"id": c.id.clone().unwrap_or_else(|| format!("call_{i}")),
                                   "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}})
                        })
                        .collect(),
                );
            } else {
                let blocks: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| protocol::tool_call_block(&c.name, c.arguments.clone()))
                    .collect();
                let text = content.unwrap_or_default();
                let sep = if text.is_empty() { "" } else { "\n" };
                content = Some(format!("{text}{sep}{}", blocks.join("\n")));
            }
        }
        out["content"] = match content {
            Some(c) => json!(c),
            // Only an assistant message with native tool calls has no content (as OpenAI's).
            None => Value::Null,
        };
        if let Some(id) = &m.tool_call_id {
            out["tool_call_id"] = json!(id);
        }
        if let Some(name) = &m.name {
            out["name"] = json!(name);
        }
        out
    }
}

/// The tools for a template that does not render them: a system-prompt section in the
/// protocol's tool-call format, one function schema per line.
pub fn tools_section(tools: &[Value]) -> String {
    let (open, close) = protocol::TOOL_CALL;
    let schemas: Vec<String> = tools.iter().map(Value::to_string).collect();
    format!(
        "# Tools\n\nYou may call one of these functions. To call one, reply with \
{open}{{\"name\": <function-name>, \"arguments\": <args-json-object>}}{close}.\n\
<tools>\n{}\n</tools>",
        schemas.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::api::{parse_chat_request, Limits};

    fn smol_like() -> ChatTemplate {
        // SmolLM2-135M-Instruct's template: no tools, no tool_calls, no tool wrapping.
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        ChatTemplate::new(Some(t.into()), None, None).unwrap()
    }

    fn request(v: Value) -> ChatRequest {
        parse_chat_request(v.to_string().as_bytes(), Limits { max_n: 4 }).unwrap()
    }

    fn tokenizer() -> Arc<Tokenizer> {
        let dir = testkit::base_model();
        Arc::new(Tokenizer::from_dir(&dir, &[]).unwrap())
    }

    #[test]
    fn tools_in_the_text_for_templates_without_them() {
        let p = Prompter::new(tokenizer(), smol_like());
        assert!(!p.native_tools && !p.native_tool_calls);
        let req = request(json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}));
        let text = p.render(&req).unwrap();
        assert!(text.starts_with("<|im_start|>system\n# Tools\n"), "{text}");
        assert!(text.contains("\"name\":\"get_weather\""), "{text}");
        assert!(text.contains(
            "<|im_start|>assistant\nLet me look.\n<tool_call>{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_weather\"}</tool_call><|im_end|>"
        ), "{text}");
        assert!(
            text.contains("<|im_start|>tool\n<tool_response>\nsunny\n</tool_response><|im_end|>"),
            "{text}"
        );
        assert!(text.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn native_templates_get_tools_and_calls_as_they_are() {
        let chat = ChatTemplate::new(Some(testkit::template("qwen2.5")), None, None).unwrap();
        let p = Prompter::new(tokenizer(), chat);
        assert!(p.native_tools && p.native_tool_calls);
        let req = request(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "sunny"}],
            "tools": [{"type": "function","function": {"name": "get_weather","description": "The weather in a city.","parameters": {"type": "object","properties": {"city": {"type": "string"}},"required": ["city"]}}}]}));
        let text = p.render(&req).unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools"),
            "{text}"
        );
        assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{text}");
        // The template wraps the tool result itself: one <tool_response>.
        assert_eq!(text.matches("<tool_response>").count(), 1, "{text}");
        assert!(
            text.contains("<tool_response>\nsunny\n</tool_response>"),
            "{text}"
        );
        let ids = p.prompt_ids(&req).unwrap();
        assert!(!ids.is_empty());
    }
}
