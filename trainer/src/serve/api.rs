//! The chat-completions request as the server accepts it: parsing and validation of the
//! JSON body, field by field, into a [`ChatRequest`]; every rejection is an [`ApiError`]
//! whose body is OpenAI's (`{"error": {"message", "type", "param", "code"}}`) and names the
//! offending field (`temperature`, `messages[2].content`, `tools[0].function.name`).
//!
//! Unknown top-level fields are ignored (clients send `user`, `metadata`, `store`, ...);
//! known ones with a wrong type or value, and features this server does not have (log-probs,
//! penalties, JSON modes), are refused rather than silently dropped. Messages and tools are
//! read by `messages.rs`; the tests are in `api_tests.rs`.

use super::messages::{message, tool_list};
pub use super::messages::{CallIn, ChatMessage};
use serde_json::{json, Map, Value};

/// An error reply: HTTP status plus OpenAI's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `rate_limit_exceeded`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 naming `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// 400 about the body as a whole (not JSON, not an object).
    pub fn body(message: impl Into<String>) -> Self {
        Self {
            param: None,
            ..Self::invalid("", message)
        }
    }

    pub fn with_status(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    pub fn server(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// The function schemas offered (`{"type": "function", "function": {...}}` each), empty
    /// when none or when `tool_choice` is "none".
    pub tools: Vec<Value>,
    pub temperature: f64,
    pub top_p: f64,
    /// Extension (vLLM's): keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Extension (vLLM's): keep sampling past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Server limits the validation needs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most choices per request (`n`): the engine's batch.
    pub max_n: usize,
}

/// At most this many stop strings, as OpenAI.
pub const MAX_STOPS: usize = 4;

pub fn parse_chat_request(body: &[u8], limits: Limits) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::body(format!(
            "the request body is not valid JSON ({e}); send a JSON object"
        ))
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::body(format!(
            "the request body must be a JSON object, not {}",
            type_name(&v)
        )));
    };
    let model = match o.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(ApiError::invalid("model", "model is empty")),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "model",
                "you must provide a model parameter",
            ))
        }
        Some(other) => return Err(wrong_type("model", "a string", other)),
    };
    let messages = match o.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "messages must hold at least one message",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "messages is required"))
        }
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    };
    let temperature = number(&o, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = number(&o, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
    let top_k = match integer(&o, "top_k", -1, i64::MAX)? {
        None | Some(-1) | Some(0) => 0,
        Some(k) => k as usize,
    };
    let max_tokens = match integer(&o, "max_completion_tokens", 1, i64::MAX)? {
        Some(m) => Some(m as usize),
        None => integer(&o, "max_tokens", 1, i64::MAX)?.map(|m| m as usize),
    };
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Some(u),
            (None, Some(i)) => Some(i as u64),
            _ => return Err(ApiError::invalid("seed", "seed must be an integer")),
        },
        Some(other) => return Err(wrong_type("seed", "an integer", other)),
    };
    let n = integer(&o, "n", 1, limits.max_n as i64)?.unwrap_or(1) as usize;
    let stream = boolean(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => boolean(so, "include_usage")
            .map_err(|e| ApiError::invalid("stream_options.include_usage", e.message))?
            .unwrap_or(false),
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    };
    let ignore_eos = boolean(&o, "ignore_eos")?.unwrap_or(false);
    let stop = stops(o.get("stop"))?;
    let mut tools = tool_list(o.get("tools"))?;
    if !tool_choice(o.get("tool_choice"), &tools)? {
        tools.clear();
    }
    unsupported(&o)?;
    Ok(ChatRequest {
        model,
        messages,
        tools,
        temperature,
        top_p,
        top_k,
        max_tokens,
        seed,
        stop,
        n,
        stream,
        include_usage,
        ignore_eos,
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong_type(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        param,
        format!("{param} must be {want}, not {}", type_name(got)),
    )
}

fn number(o: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                key,
                format!("{key} must be between {lo} and {hi}, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type(key, "a number", other)),
    }
}

fn integer(o: &Map<String, Value>, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            Some(_) if hi == i64::MAX => Err(ApiError::invalid(
                key,
                format!("{key} must be at least {lo}, got {n}"),
            )),
            Some(_) => Err(ApiError::invalid(
                key,
                format!("{key} must be between {lo} and {hi}, got {n}"),
            )),
            None => Err(ApiError::invalid(
                key,
                format!("{key} must be an integer, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type(key, "an integer", other)),
    }
}

fn boolean(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "a boolean", other)),
    }
}

fn stops(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(&format!("stop[{i}]"), "a string", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop sequences, got {}", list.len()),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(list)
}

/// Whether tools stay offered: false for "none". "auto", "required" and a named function
/// leave the choice to the model (this server does not constrain it to call).
fn tool_choice(v: Option<&Value>, tools: &[Value]) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(false),
            "auto" | "required" => Ok(true),
            other => Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "tool_choice `{}` is not none, auto, required or a function",
                    tools::registry::cut(other, 40)
                ),
            )),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice.function.name",
                        "a named tool_choice needs function.name",
                    )
                })?;
            let offered = tools
                .iter()
                .any(|t| t["function"]["name"].as_str() == Some(name));
            if !offered {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!(
                        "tool_choice names `{}`, which is not in tools",
                        tools::registry::cut(name, 64)
                    ),
                ));
            }
            Ok(true)
        }
        Some(other) => Err(wrong_type("tool_choice", "a string or an object", other)),
    }
}

/// Features that change the reply and that this server does not have: refused by name.
fn unsupported(o: &Map<String, Value>) -> Result<(), ApiError> {
    let off = |key: &str, message: &str| Err(ApiError::invalid(key, message.to_string()));
    if boolean(o, "logprobs")?.unwrap_or(false) {
        return off(
            "logprobs",
            "log-probabilities are not supported by this server",
        );
    }
    if !matches!(o.get("top_logprobs"), None | Some(Value::Null)) {
        return off(
            "top_logprobs",
            "log-probabilities are not supported by this server",
        );
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if number(o, key, -2.0, 2.0)?.is_some_and(|x| x != 0.0) {
            return off(
                key,
                "penalties are not supported by this server (send 0 or omit it)",
            );
        }
    }
    match o.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => return off("logit_bias", "logit_bias is not supported by this server"),
    }
    match o.get("response_format") {
        None | Some(Value::Null) => {}
        Some(rf) if rf.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => {
            return off(
                "response_format",
                "only {\"type\": \"text\"} responses are supported by this server",
            )
        }
    }
    Ok(())
}
