//! Unit tests of the request validation (`api.rs`, `messages.rs`): every malformed field is
//! refused with its name; messages, tools and extensions normalize.

use super::api::*;
use serde_json::{json, Value};

const LIMITS: Limits = Limits { max_n: 4 };

fn parse(v: Value) -> Result<ChatRequest, ApiError> {
    parse_chat_request(v.to_string().as_bytes(), LIMITS)
}

fn param_of(v: Value) -> Option<String> {
    let e = parse(v).expect_err("should be refused");
    assert_eq!(e.status, 400);
    e.param
}

fn base() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(key: &str, value: Value) -> Value {
    let mut b = base();
    b[key] = value;
    b
}

#[test]
fn defaults() {
    let r = parse(base()).unwrap();
    assert_eq!(
        (r.temperature, r.top_p, r.n, r.stream),
        (1.0, 1.0, 1, false)
    );
    assert_eq!(r.max_tokens, None);
    assert!(r.tools.is_empty() && r.stop.is_empty());
}

#[test]
fn each_bad_field_is_named() {
    assert_eq!(
        parse_chat_request(b"{not json", LIMITS).unwrap_err().param,
        None
    );
    assert_eq!(param_of(json!([1, 2])), None);
    assert_eq!(param_of(json!({"messages": []})), Some("model".into()));
    assert_eq!(param_of(json!({"model": "m"})), Some("messages".into()));
    assert_eq!(
        param_of(with("messages", json!("hi"))),
        Some("messages".into())
    );
    assert_eq!(
        param_of(with("messages", json!([{"content": "x"}]))),
        Some("messages[0].role".into())
    );
    assert_eq!(
        param_of(with("messages", json!([{"role": "user", "content": 3}]))),
        Some("messages[0].content".into())
    );
    assert_eq!(
        param_of(with(
            "messages",
            json!([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}])
        )),
        Some("messages[1].role".into())
    );
    assert_eq!(
        param_of(with(
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url"}]}])
        )),
        Some("messages[0].content[0].type".into())
    );
    assert_eq!(
        param_of(with(
            "messages",
            json!([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}])
        )),
        Some("messages[0].tool_calls[0].function.arguments".into())
    );
    assert_eq!(
        param_of(with("temperature", json!("hot"))),
        Some("temperature".into())
    );
    assert_eq!(
        param_of(with("temperature", json!(3))),
        Some("temperature".into())
    );
    assert_eq!(param_of(with("top_p", json!(1.5))), Some("top_p".into()));
    assert_eq!(
        param_of(with("max_tokens", json!(0))),
        Some("max_tokens".into())
    );
    assert_eq!(
        param_of(with("max_tokens", json!(2.5))),
        Some("max_tokens".into())
    );
    assert_eq!(param_of(with("n", json!(5))), Some("n".into()));
    assert_eq!(param_of(with("seed", json!("x"))), Some("seed".into()));
    assert_eq!(
        param_of(with("stream", json!("yes"))),
        Some("stream".into())
    );
    assert_eq!(
        param_of(with("stop", json!(["a", 1]))),
        Some("stop[1]".into())
    );
    assert_eq!(
        param_of(with("stop", json!(["a", "b", "c", "d", "e"]))),
        Some("stop".into())
    );
    assert_eq!(param_of(with("tools", json!({}))), Some("tools".into()));
    assert_eq!(
        param_of(with(
            "tools",
            json!([{"type": "function", "function": {"name": "bad name"}}])
        )),
        Some("tools[0].function.name".into())
    );
    assert_eq!(
        param_of(with(
            "tool_choice",
            json!({"type": "function", "function": {"name": "nope"}})
        )),
        Some("tool_choice.function.name".into())
    );
    assert_eq!(
        param_of(with("logprobs", json!(true))),
        Some("logprobs".into())
    );
    assert_eq!(
        param_of(with("presence_penalty", json!(0.5))),
        Some("presence_penalty".into())
    );
    assert_eq!(
        param_of(with("stream_options", json!({"include_usage": 1}))),
        Some("stream_options.include_usage".into())
    );
}

#[test]
fn messages_and_tools_normalize() {
    let r = parse(json!({
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "stop": "END", "seed": -1, "max_completion_tokens": 7
    }))
    .unwrap();
    assert_eq!(r.messages[0].role, "system");
    assert_eq!(r.messages[0].content.as_deref(), Some("ab"));
    assert_eq!(r.messages[2].tool_calls[0].arguments, json!({"x": 1}));
    assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(r.tools.len(), 1);
    assert_eq!(r.stop, vec!["END"]);
    assert_eq!(r.seed, Some(u64::MAX));
    assert_eq!(r.max_tokens, Some(7));
    let none = parse(with(
        "tools",
        json!([{"type": "function", "function": {"name": "f"}}]),
    ));
    assert_eq!(none.unwrap().tools.len(), 1);
    let mut b = with(
        "tools",
        json!([{"type": "function", "function": {"name": "f"}}]),
    );
    b["tool_choice"] = json!("none");
    assert!(parse(b).unwrap().tools.is_empty());
}
