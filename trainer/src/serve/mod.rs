//! `recthinker serve`: an OpenAI-compatible chat-completions server for any model directory
//! `lm::Policy::load` reads (a base HF directory, an exported one, ...).
//!
//! - `api.rs`: the request (validation, 400s naming the field) and OpenAI's error body;
//!   `messages.rs` its messages and tools.
//! - `prompt.rs`: messages and tools through the model's chat template.
//! - `reply.rs`: generated text as content (streamed safely past stop sequences) or tool calls.
//! - `worker.rs`: the engine thread (one model, one continuously batched engine).
//! - `http.rs`: the routes and the bounded queue (429 + Retry-After); `respond.rs` the
//!   reply, as one JSON object or as server-sent events.
//! - `stats.rs`: counters for `GET /health`.
//!
//! Shutdown: SIGTERM or SIGINT stops accepting connections, lets every accepted request
//! (running or queued) finish and its reply be written, then stops the engine thread; after
//! `--shutdown-timeout` seconds the server exits even if a client is still reading.

pub mod api;
#[cfg(test)]
mod api_tests;
pub mod http;
pub mod messages;
pub mod prompt;
pub mod reply;
pub mod respond;
pub mod stats;
pub mod worker;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use lm::device::{parse_device, parse_dtype};
use lm::Policy;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Model directory (HF: config.json, *.safetensors, tokenizer.json; or an exported one).
    #[arg(long, default_value = "checkpoints/base/SmolLM2-135M-Instruct")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Most rows (choices of all requests) generated together; also the largest `n`.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Most requests waiting for the engine; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// The model id clients send (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds to let accepted requests finish after SIGTERM before exiting anyway.
    #[arg(long, default_value_t = 60.0)]
    pub shutdown_timeout: f64,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    if a.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    if !(a.shutdown_timeout.is_finite() && a.shutdown_timeout >= 0.0) {
        bail!("--shutdown-timeout must be a number of seconds >= 0");
    }
    let device = parse_device(&a.device)?;
    let kind = parse_dtype(&a.dtype)?;
    let policy = Policy::load(&a.model, device, kind)?;
    let model_id = match &a.served_model_name {
        Some(n) => n.clone(),
        None => a
            .model
            .canonicalize()
            .unwrap_or_else(|_| a.model.clone())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string()),
    };
    let Policy {
        model,
        tokenizer,
        chat,
        ..
    } = policy;
    let max_context = model.config.max_position_embeddings as usize;
    let tok = Arc::new(tokenizer);
    let prompter = Arc::new(prompt::Prompter::new(tok.clone(), chat));
    let stats = Arc::new(stats::Stats::default());
    let (jobs, rx) = std::sync::mpsc::sync_channel(a.max_queue);
    let worker = worker::spawn(
        worker::Worker {
            max_batch: a.max_batch,
            recycle_after_rows: 4096,
        },
        model,
        tok,
        rx,
        stats.clone(),
    )
    .context("starting the engine thread")?;
    let app = Arc::new(http::App {
        jobs,
        prompter: prompter.clone(),
        model_id: model_id.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        max_context,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        max_body_bytes: a.max_body_bytes,
        stats,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let tools_note = match (prompter.native_tools, prompter.native_tool_calls) {
        (true, true) => "tools and tool calls through the chat template",
        (true, false) => "tools through the chat template, tool calls as <tool_call> text",
        _ => "tools as a system-prompt section, tool calls as <tool_call> text",
    };
    let timeout = Duration::from_secs_f64(a.shutdown_timeout);
    let finished = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "recthinker serve: {model_id} (context {max_context} tokens, batch {}, queue {}; {tools_note}) on http://{addr}/v1",
            a.max_batch, a.max_queue
        );
        let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, http::router(app)).with_graceful_shutdown(async move {
            let name = shutdown_signal().await;
            eprintln!("recthinker serve: {name}: no new connections; finishing accepted requests");
            let _ = signalled.send(true);
        });
        tokio::select! {
            r = server => r.context("the HTTP server").map(|_| true),
            _ = async {
                let _ = on_signal.wait_for(|s| *s).await;
                tokio::time::sleep(timeout).await;
            } => Ok(false),
        }
    })?;
    // The router (and with it the job sender) is gone: the engine thread ends once its
    // accepted jobs are done.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if finished {
        if worker.join().is_err() {
            bail!("the engine thread panicked");
        }
        eprintln!("recthinker serve: stopped");
    } else {
        eprintln!(
            "recthinker serve: clients still connected {:.0} s after the signal; exiting",
            timeout.as_secs_f64()
        );
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); the signal's name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
