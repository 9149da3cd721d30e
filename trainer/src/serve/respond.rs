//! A chat completion's reply from the engine's events: one JSON object, or the server-sent
//! event stream (a role chunk per choice, content deltas as the engine makes them, each
//! choice's end with its tool calls and finish reason, the usage chunk when asked, `data:
//! [DONE]`). Dropping the stream (the client left) closes the job's channel, which cancels
//! the job in the engine.

use super::api::ApiError;
use super::reply::Final;
use super::worker::Event;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub n: usize,
    pub prompt_tokens: usize,
}

impl Meta {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
               "total_tokens": self.prompt_tokens + completion_tokens})
    }

    fn chunk(&self, choices: Value) -> String {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model, "choices": choices});
        format!("data: {c}\n\n")
    }
}

fn failed(e: Option<String>) -> ApiError {
    ApiError::server(
        500,
        match e {
            Some(e) => format!("generation failed: {e}"),
            None => "generation stopped before the request finished".to_string(),
        },
    )
}

pub(super) async fn json_reply(
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut ends: Vec<Option<(Final, usize)>> = vec![None; meta.n];
    let mut left = meta.n;
    while left > 0 {
        match rx.recv().await {
            Some(Event::Text { .. }) => {}
            Some(Event::End {
                index,
                end,
                completion_tokens,
            }) => {
                if let Some(slot) = ends.get_mut(index) {
                    *slot = Some((end, completion_tokens));
                    left -= 1;
                }
            }
            Some(Event::Failed(e)) => return Err(failed(Some(e))),
            None => return Err(failed(None)),
        }
    }
    let mut choices = Vec::new();
    let mut completion = 0;
    for (index, (end, tokens)) in ends.into_iter().flatten().enumerate() {
        completion += tokens;
        let mut message = json!({"role": "assistant", "content": end.content});
        if !end.tool_calls.is_empty() {
            message["tool_calls"] = end.tool_calls.iter().map(|c| c.to_json()).collect();
        }
        choices.push(json!({"index": index, "message": message,
                            "finish_reason": end.finish_reason, "logprobs": null}));
    }
    let body = json!({"id": meta.id, "object": "chat.completion", "created": meta.created,
                      "model": meta.model, "choices": choices, "usage": meta.usage(completion)});
    Ok(json_response(StatusCode::OK, &body))
}

struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    started: bool,
    left: usize,
    completion_tokens: usize,
    finished: bool,
}

impl StreamState {
    /// The SSE text for one event.
    fn event(&mut self, ev: Option<Event>, out: &mut String) {
        match ev {
            Some(Event::Text { index, text }) => out.push_str(&self.meta.chunk(
                json!([{"index": index, "delta": {"content": text}, "finish_reason": null, "logprobs": null}]),
            )),
            Some(Event::End {
                index,
                end,
                completion_tokens,
            }) => {
                if !end.tail.is_empty() {
                    out.push_str(&self.meta.chunk(json!([{"index": index,
                        "delta": {"content": end.tail}, "finish_reason": null, "logprobs": null}])));
                }
                if !end.tool_calls.is_empty() {
                    let calls: Vec<Value> = end
                        .tool_calls
                        .iter()
                        .enumerate()
                        .map(|(k, c)| {
                            let mut v = c.to_json();
                            v["index"] = json!(k);
                            v
                        })
                        .collect();
                    out.push_str(&self.meta.chunk(json!([{"index": index,
                        "delta": {"tool_calls": calls}, "finish_reason": null, "logprobs": null}])));
                }
                out.push_str(&self.meta.chunk(json!([{"index": index, "delta": {},
                    "finish_reason": end.finish_reason, "logprobs": null}]))); 
                self.completion_tokens += completion_tokens;
                self.left = self.left.saturating_sub(1);
                if self.left == 0 {
                    if self.include_usage {
                        let c = json!({"id": self.meta.id, "object": "chat.completion.chunk",
                            "created": self.meta.created, "model": self.meta.model, "choices": [],
                            "usage": self.meta.usage(self.completion_tokens)});
                        out.push_str(&format!("data: {c}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    self.finished = true;
                }
            }
            Some(Event::Failed(e)) => self.fail(Some(e), out),
            None => self.fail(None, out),
        }
    }

    fn fail(&mut self, e: Option<String>, out: &mut String) {
        out.push_str(&format!("data: {}\n\n", failed(e).to_json()));
        out.push_str("data: [DONE]\n\n");
        self.finished = true;
    }
}

/// The event stream: a role chunk per choice, content deltas as the engine makes them
/// (events that are ready together go out in one write), each choice's end, the usage chunk
/// when asked, `data: [DONE]`. Dropping it (the client left) closes the job's channel, which
/// cancels the job in the engine.
pub(super) fn stream_reply(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Response {
    let left = meta.n;
    let state = StreamState {
        meta,
        rx,
        include_usage,
        started: false,
        left,
        completion_tokens: 0,
        finished: false,
    };
    let body = stream::unfold(state, |mut s| async move {
        if s.finished {
            return None;
        }
        let mut out = String::new();
        if !s.started {
            s.started = true;
            for index in 0..s.meta.n {
                out.push_str(&s.meta.chunk(json!([{"index": index,
                    "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null}])));
            }
            return Some((Ok::<_, Infallible>(Bytes::from(out)), s));
        }
        let ev = s.rx.recv().await;
        s.event(ev, &mut out);
        for _ in 0..256 {
            if s.finished {
                break;
            }
            match s.rx.try_recv() {
                Ok(ev) => s.event(Some(ev), &mut out),
                Err(_) => break,
            }
        }
        Some((Ok(Bytes::from(out)), s))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
