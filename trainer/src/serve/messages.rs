//! The messages and tools of a chat-completions request: roles, content (a string or text
//! parts), an assistant's `tool_calls` (arguments parsed to JSON objects), a tool message's
//! `tool_call_id`, and the function schemas offered; each refusal names its field
//! (`messages[2].content`, `messages[1].tool_calls[0].function.arguments`,
//! `tools[0].function.name`).

use super::api::{wrong_type, ApiError};
use serde_json::{json, Map, Value};

/// A tool call in an assistant message of the request (arguments parsed to an object).
#[derive(Debug, Clone, PartialEq)]
pub struct CallIn {
    pub id: Option<String>,
    pub name: String,
    pub arguments: Value,
}

/// One validated message. `role` is system, user, assistant or tool (`developer` reads as
/// system); text content parts are joined.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<String>,
    pub tool_calls: Vec<CallIn>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// Text of `content`: a string, or an array of `{"type": "text", "text": ...}` parts.
fn content(param: &str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let at = format!("{param}[{j}]");
                let Value::Object(p) = p else {
                    return Err(wrong_type(&at, "an object", p));
                };
                match p.get("type") {
                    Some(Value::String(t)) if t == "text" => {}
                    Some(Value::String(t)) => {
                        return Err(ApiError::invalid(
                            format!("{at}.type"),
                            format!("content parts of type `{t}` are not supported; only text"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{at}.type"),
                            "a content part needs \"type\": \"text\"",
                        ))
                    }
                }
                match p.get("text") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(other) => {
                        return Err(wrong_type(&format!("{at}.text"), "a string", other))
                    }
                    None => {
                        return Err(ApiError::invalid(format!("{at}.text"), "text is required"))
                    }
                }
            }
            Ok(Some(text))
        }
        other => Err(wrong_type(
            param,
            "a string or an array of content parts",
            other,
        )),
    }
}

fn optional_string(
    o: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<String>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(&format!("{at}.{key}"), "a string", other)),
    }
}

pub(super) fn message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(o) = v else {
        return Err(wrong_type(&at, "an object", v));
    };
    let role = match o.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::invalid(
                    format!("{at}.role"),
                    format!(
                        "role `{}` is not one of system, developer, user, assistant, tool",
                        tools::registry::cut(other, 40)
                    ),
                ))
            }
        },
        Some(other) => return Err(wrong_type(&format!("{at}.role"), "a string", other)),
        None => return Err(ApiError::invalid(format!("{at}.role"), "role is required")),
    };
    let text = match o.get("content") {
        None => None,
        Some(c) => content(&format!("{at}.content"), c)?,
    };
    let tool_calls = match o.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if role == "assistant" => a
            .iter()
            .enumerate()
            .map(|(j, c)| call_in(&format!("{at}.tool_calls[{j}]"), c))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                format!("{at}.tool_calls"),
                "only assistant messages carry tool_calls",
            ))
        }
        Some(other) => return Err(wrong_type(&format!("{at}.tool_calls"), "an array", other)),
    };
    // Only an assistant message with tool calls may go without content.
    if text.is_none() && tool_calls.is_empty() {
        return Err(ApiError::invalid(
            format!("{at}.content"),
            format!("content is required for a {role} message"),
        ));
    }
    Ok(ChatMessage {
        role: role.to_string(),
        content: text,
        tool_calls,
        tool_call_id: optional_string(o, "tool_call_id", &at)?,
        name: optional_string(o, "name", &at)?,
    })
}

fn call_in(at: &str, v: &Value) -> Result<CallIn, ApiError> {
    let Value::Object(o) = v else {
        return Err(wrong_type(at, "an object", v));
    };
    let Some(Value::Object(f)) = o.get("function") else {
        return Err(ApiError::invalid(
            format!("{at}.function"),
            "a tool call needs a function object {\"name\", \"arguments\"}",
        ));
    };
    let name = match f.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::invalid(
                format!("{at}.function.name"),
                "the function name must be a non-empty string",
            ))
        }
    };
    let arguments = match f.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
            ApiError::invalid(
                format!("{at}.function.arguments"),
                format!("arguments must be a JSON object encoded as a string ({e})"),
            )
        })?,
        Some(a) => a.clone(),
    };
    if !arguments.is_object() {
        return Err(ApiError::invalid(
            format!("{at}.function.arguments"),
            "arguments must be a JSON object",
        ));
    }
    Ok(CallIn {
        id: optional_string(o, "id", at)?,
        name,
        arguments,
    })
}

pub(super) fn tool_list(v: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong_type("tools", "an array", other)),
    };
    let mut names = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(o) = t else {
            return Err(wrong_type(&at, "an object", t));
        };
        match o.get("type") {
            Some(Value::String(s)) if s == "function" => {}
            _ => {
                return Err(ApiError::invalid(
                    format!("{at}.type"),
                    "only tools of \"type\": \"function\" are supported",
                ))
            }
        }
        let Some(Value::Object(f)) = o.get("function") else {
            return Err(ApiError::invalid(
                format!("{at}.function"),
                "a tool needs a function object",
            ));
        };
        let name = match f.get("name") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(ApiError::invalid(
                    format!("{at}.function.name"),
                    "the function name must be a string",
                ))
            }
        };
        let ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(ApiError::invalid(
                format!("{at}.function.name"),
                "function names are 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if names.contains(&name) {
            return Err(ApiError::invalid(
                format!("{at}.function.name"),
                format!("function `{name}` is offered twice"),
            ));
        }
        names.push(name);
        match f.get("description") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => {
                return Err(wrong_type(
                    &format!("{at}.function.description"),
                    "a string",
                    other,
                ))
            }
        }
        match f.get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(other) => {
                return Err(wrong_type(
                    &format!("{at}.function.parameters"),
                    "a JSON schema object",
                    other,
                ))
            }
        }
    }
    Ok(list.clone())
}
