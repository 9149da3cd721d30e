//! The HTTP routes (axum): `GET /v1/models`, `GET /v1/models/{id}`, `POST
//! /v1/chat/completions` (JSON or server-sent events), `GET /health`; everything else is an
//! OpenAI-shaped 404/405. A request is read (at most `max_body_bytes`, else 413), validated
//! (400 naming the field), rendered and tokenized off the async threads, then handed to the
//! engine thread through a bounded channel: when `max_queue` requests already wait, the reply
//! is 429 with `Retry-After` (503 while shutting down), so the backlog never grows unbounded.

use super::api::{parse_chat_request, ApiError, ChatRequest, Limits};
use super::prompt::Prompter;
use super::respond::{json_reply, json_response, stream_reply, Meta};
use super::stats::Stats;
use super::worker::{random_tag, Event, Job};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::StreamExt;
use lm::sampling::SamplingParams;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Seconds a client is asked to wait after a 429 or 503.
pub const RETRY_AFTER_S: u64 = 1;

pub struct App {
    pub jobs: SyncSender<Job>,
    pub prompter: Arc<Prompter>,
    pub model_id: String,
    pub created: u64,
    pub max_context: usize,
    pub max_batch: usize,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub stats: Arc<Stats>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &e.to_json());
    if matches!(e.status, 429 | 503) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    r
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_object(app: &App) -> Value {
    json!({"id": app.model_id, "object": "model", "created": app.created, "owned_by": "recthinker"})
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [model_object(&app)]}),
    )
}

fn unknown_model(id: &str) -> ApiError {
    ApiError::invalid(
        "model",
        format!(
            "the model `{}` does not exist; this server serves one model (GET /v1/models)",
            tools::registry::cut(id, 100)
        ),
    )
    .with_status(404, "model_not_found")
}

async fn get_model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if id == app.model_id {
        json_response(StatusCode::OK, &model_object(&app))
    } else {
        error_response(&unknown_model(&id))
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let mut v = app.stats.to_json();
    v["status"] = json!("ok");
    v["model"] = json!(app.model_id);
    json_response(StatusCode::OK, &v)
}

/// Unknown routes and methods. The body is read (bounded) and dropped first: a reply that
/// leaves a request body unread makes hyper close the connection, which would break a
/// client's next request on it.
async fn not_found(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let msg = format!("Invalid URL ({method} {})", uri.path());
    refuse(&app, &headers, body, msg, 404, "not_found").await
}

async fn method_not_allowed(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let msg = format!("{method} is not allowed on {}", uri.path());
    refuse(&app, &headers, body, msg, 405, "method_not_allowed").await
}

/// Reads (and drops) the body so the connection stays usable, counts the request as
/// invalid, and answers with the error.
async fn refuse(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    msg: String,
    status: u16,
    code: &'static str,
) -> Response {
    let _ = read_body(headers, body, app.max_body_bytes).await;
    app.stats.invalid.fetch_add(1, Ordering::Relaxed);
    error_response(&ApiError::body(msg).with_status(status, code))
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match accept(&app, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status != 429 && e.status < 500 {
                app.stats.invalid.fetch_add(1, Ordering::Relaxed);
            }
            error_response(&e)
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::body(format!(
        "the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"
    ))
    .with_status(413, "request_too_large")
}

/// Bodies up to this many times the limit are read to the end (and dropped) before the 413,
/// so that a client still sending gets the reply rather than a reset connection.
const DRAIN_FACTOR: u64 = 16;

/// The body, at most `limit` bytes (memory held: at most `limit`).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let drain_cap = (limit as u64).saturating_mul(DRAIN_FACTOR);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_cap) {
        return Err(too_large(limit));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::body(format!("could not read the request body: {e}")))?;
        total += chunk.len() as u64;
        if total > drain_cap {
            return Err(too_large(limit));
        }
        if total <= limit as u64 {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit as u64 {
        return Err(too_large(limit));
    }
    Ok(buf)
}

/// Validates, renders and queues a request; its reply (JSON, or the event stream).
async fn accept(app: &Arc<App>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, app.max_body_bytes).await?;
    let req = parse_chat_request(
        &bytes,
        Limits {
            max_n: app.max_batch,
        },
    )?;
    drop(bytes);
    if req.model != app.model_id {
        return Err(unknown_model(&req.model));
    }
    if app.stats.queued.load(Ordering::Relaxed) >= app.max_queue {
        app.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return Err(queue_full(app.max_queue));
    }
    let prompter = app.prompter.clone();
    let (req, prompt) = tokio::task::spawn_blocking(move || {
        let ids = prompter.prompt_ids(&req);
        (req, ids)
    })
    .await
    .map_err(|e| ApiError::server(500, format!("rendering the prompt: {e}")))?;
    let prompt = prompt?;
    let job_and_rx = job(app, &req, prompt)?;
    let (job, rx) = job_and_rx;
    let prompt_tokens = job.prompt.len();
    app.stats.queued.fetch_add(1, Ordering::Relaxed);
    match app.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            app.stats.queued.fetch_sub(1, Ordering::Relaxed);
            app.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(queue_full(app.max_queue));
        }
        Err(TrySendError::Disconnected(_)) => {
            app.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::server(503, "the server is shutting down"));
        }
    }
    let meta = Meta {
        id: format!("chatcmpl-{}", random_tag(24)),
        created: now(),
        model: app.model_id.clone(),
        n: req.n,
        prompt_tokens,
    };
    Ok(if req.stream {
        stream_reply(meta, rx, req.include_usage)
    } else {
        json_reply(meta, rx).await?
    })
}

fn queue_full(max_queue: usize) -> ApiError {
    ApiError {
        status: 429,
        message: format!(
            "the server is at capacity ({max_queue} requests already wait for the engine); retry after {RETRY_AFTER_S} s"
        ),
        kind: "rate_limit_exceeded",
        param: None,
        code: Some("rate_limit_exceeded"),
    }
}

/// The engine job for a validated request whose prompt is `prompt`.
fn job(
    app: &App,
    req: &ChatRequest,
    prompt: Vec<i64>,
) -> Result<(Job, UnboundedReceiver<Event>), ApiError> {
    let room = app.max_context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt is {} tokens; this model's context is {} tokens",
                prompt.len(),
                app.max_context
            ),
        ));
    }
    let max_tokens = match req.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "this model's context is {} tokens; the prompt takes {} and max_tokens asks for {m} more (at most {room})",
                    app.max_context,
                    prompt.len()
                ),
            ))
        }
        Some(m) => m,
        None => room,
    };
    let base = SamplingParams {
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        max_new_tokens: max_tokens,
        stop: req.stop.clone(),
        seed: 0,
        ignore_eos: req.ignore_eos,
        constraint: None,
    };
    let tools = !req.tools.is_empty();
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt,
        choices: Job::sampling(&base, req.n, req.seed, tools),
        stops: req.stop.clone(),
        tools,
        stream: req.stream,
        events: tx,
    };
    Ok((job, rx))
}
