//! The `openai` teacher: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
//! llama.cpp's server, `transformers serve`, ...) plays the agent. Tools are offered as
//! native function schemas; a reply may call one natively (`tool_calls`) or in the protocol's
//! text form (`<tool_call>{...}</tool_call>`). Every turn is rewritten into the protocol's
//! turn format, so the SFT set looks exactly like the policy's own rollouts.

use super::{Candidate, Teacher, TeacherOutput};
use anyhow::{bail, Context, Result};
use datasets::Episode;
use lm::chat::Message;
use lm::engine::StopReason;
use lm::progress::Progress;
use rayon::prelude::*;
use rollout::prompt::{system_prompt, user_prompt};
use rollout::protocol::{self, classify, TurnAction};
use rollout::{AgentConfig, EndReason};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tools::registry::cut;
use tools::{EpisodeView, Registry, ToolCall, World};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL up to the version, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:8000/v1`; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Environment variable holding the API key (sent as a Bearer token); "" sends none
    /// (local servers).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Conversations per episode (use temperature > 0 for different ones).
    #[serde(default = "crate::config::defaults::one")]
    pub samples: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Most tokens per reply.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Seconds one request may take, connection included.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries of a request after a time-out, a connection error, 408, 409, 429 or 5xx.
    #[serde(default = "crate::config::defaults::four")]
    pub max_retries: usize,
    /// Wait before the first retry; doubles each time (a Retry-After header wins).
    #[serde(default = "default_backoff")]
    pub backoff_s: f64,
    /// Episodes played at once.
    #[serde(default = "crate::config::defaults::four")]
    pub concurrency: usize,
    /// Offer the tools as function schemas (`tools`); false: the text protocol only.
    #[serde(default = "yes")]
    pub native_tools: bool,
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_temperature() -> f64 {
    0.7
}
fn default_max_tokens() -> usize {
    1024
}
fn default_timeout() -> f64 {
    120.0
}
fn default_backoff() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// A request error the run cannot recover from (bad key, unknown model, bad request):
/// retrying or moving on to the next episode would fail the same way.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Fatal {}

/// A blocking chat-completions client with time-outs and retries.
pub struct ChatClient {
    agent: ureq::Agent,
    url: String,
    key: Option<String>,
    max_retries: usize,
    backoff: Duration,
}

fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

impl ChatClient {
    pub fn new(cfg: &OpenAiConfig) -> Result<Self> {
        let key = if cfg.api_key_env.is_empty() {
            None
        } else {
            Some(std::env::var(&cfg.api_key_env).map_err(|_| {
                anyhow::anyhow!(
                    "api_key_env: environment variable {} is not set (set it, or api_key_env = \"\" for a server without keys)",
                    cfg.api_key_env
                )
            })?)
        };
        if !(cfg.base_url.starts_with("http://") || cfg.base_url.starts_with("https://")) {
            bail!(
                "base_url: `{}` is not an http:// or https:// URL",
                cfg.base_url
            );
        }
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            bail!("timeout_s: must be a positive number of seconds");
        }
        if !(cfg.backoff_s >= 0.0 && cfg.backoff_s.is_finite()) {
            bail!("backoff_s: must be zero or more seconds");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            key,
            max_retries: cfg.max_retries,
            backoff: Duration::from_secs_f64(cfg.backoff_s),
        })
    }

    /// One attempt: Ok(json), or Err((retryable, message, retry-after)).
    fn attempt(&self, body: &str) -> Result<Value, (bool, String, Option<Duration>)> {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut resp = req
            .send(body.as_bytes())
            .map_err(|e| (true, format!("{e}"), None))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(300.0)));
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| (true, format!("reading the response: {e}"), None))?;
        if !(200..300).contains(&status) {
            return Err((
                retryable(status),
                format!("HTTP {status}: {}", cut(text.trim(), 400)),
                retry_after,
            ));
        }
        serde_json::from_str(&text).map_err(|e| {
            (
                true,
                format!("response is not JSON ({e}): {}", cut(text.trim(), 200)),
                None,
            )
        })
    }

    /// POSTs `body`, retrying transient failures with exponential back-off.
    pub fn complete(&self, body: &Value) -> Result<Value> {
        let text = body.to_string();
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            match self.attempt(&text) {
                Ok(v) => return Ok(v),
                Err((false, msg, _)) => {
                    return Err(Fatal(format!("{}: {msg}", self.url)).into());
                }
                Err((true, msg, retry_after)) => {
                    last = msg;
                    if attempt < self.max_retries {
                        std::thread::sleep(retry_after.unwrap_or(wait));
                        wait *= 2;
                    }
                }
            }
        }
        bail!(
            "{}: gave up after {} attempts: {last}",
            self.url,
            self.max_retries + 1
        )
    }
}

pub struct OpenAiTeacher {
    cfg: OpenAiConfig,
    client: ChatClient,
    agent: AgentConfig,
    seed: u64,
}

impl OpenAiTeacher {
    pub fn new(cfg: OpenAiConfig, agent: AgentConfig, seed: u64) -> Result<Self> {
        if cfg.samples == 0 || cfg.concurrency == 0 {
            bail!("samples and concurrency must be at least 1");
        }
        let client = ChatClient::new(&cfg)?;
        Ok(Self {
            cfg,
            client,
            agent,
            seed,
        })
    }

    fn request(&self, messages: &[Value], reg: &Registry, seed: u64) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            "seed": seed,
        });
        if self.cfg.native_tools {
            body["tools"] = reg.schemas();
            body["parallel_tool_calls"] = json!(false);
        }
        body
    }

    /// Plays one episode to its end (with or without an answer: the filter judges it).
    fn play(&self, world: &World, reg: &Registry, ep: &Episode, seed: u64) -> Result<Candidate> {
        let view = EpisodeView::new(world, ep);
        let system = system_prompt(Some(reg), self.agent.max_turns);
        let user = user_prompt(world, &view, self.agent.prompt_history_len);
        let mut api = vec![
            json!({"role": "system", "content": system}),
            json!({"role": "user", "content": user}),
        ];
        let mut transcript = vec![Message::system(system), Message::user(user)];
        let (mut calls, mut bad) = (0usize, 0usize);
        loop {
            let reply = self.client.complete(&self.request(&api, reg, seed))?;
            let msg = reply
                .pointer("/choices/0/message")
                .context("the response has no choices[0].message")?;
            let content = msg.get("content").and_then(Value::as_str).unwrap_or("");
            let native: Vec<&Value> = msg
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            if let Some(first) = native.first() {
                if calls >= self.agent.max_turns {
                    break; // one call too many: ends like the agent loop's MaxTurns
                }
                let name = first
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = first.pointer("/function/arguments");
                let call = native_call(name, args).text();
                let obs = reg.call_text(world, &view, &call);
                calls += 1;
                bad += usize::from(!obs.ok) + native.len() - 1;
                transcript.push(Message::assistant(protocol::with_thinking(
                    content,
                    &format!("{}{call}{}", protocol::TOOL_CALL.0, protocol::TOOL_CALL.1),
                )));
                transcript.push(Message::tool(protocol::tool_response(&obs.text)));
                // The API wants the assistant message back as sent and one tool message per
                // call id; calls after the first are refused (one call per turn).
                api.push(json!({"role": "assistant", "content": content, "tool_calls": native}));
                for (i, c) in native.iter().enumerate() {
                    let text = if i == 0 {
                        obs.text.clone()
                    } else {
                        "Error: one tool call per turn; this call was not run.".to_string()
                    };
                    api.push(json!({"role": "tool", "tool_call_id": c.get("id").cloned().unwrap_or(Value::Null), "content": text}));
                }
                continue;
            }
            match classify(content, &StopReason::Eos, calls, self.agent.max_turns) {
                TurnAction::Call(raw) => {
                    let obs = reg.call_text(world, &view, &raw);
                    calls += 1;
                    bad += usize::from(!obs.ok);
                    let turn = protocol::normalize_turn(content, protocol::TOOL_CALL);
                    let response = protocol::tool_response(&obs.text);
                    api.push(json!({"role": "assistant", "content": turn}));
                    api.push(json!({"role": "user", "content": response}));
                    transcript.push(Message::assistant(turn));
                    transcript.push(Message::tool(response));
                }
                TurnAction::End(EndReason::Answer) => {
                    transcript.push(Message::assistant(protocol::normalize_turn(
                        content,
                        protocol::ANSWER,
                    )));
                    break;
                }
                TurnAction::End(_) => {
                    transcript.push(Message::assistant(content.to_string()));
                    break;
                }
            }
        }
        Ok(Candidate {
            messages: transcript,
            tool_calls: calls,
            bad_calls: bad,
        })
    }
}

/// A native call (`arguments` arrive as a JSON string).
fn native_call(name: &str, args: Option<&Value>) -> ToolCall {
    let arguments = match args {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Some(v) => v.clone(),
        None => json!({}),
    };
    ToolCall::new(name, arguments)
}

impl Teacher for OpenAiTeacher {
    fn conversations(
        &self,
        world: &World,
        reg: &Registry,
        episodes: &[&Episode],
        bar: &Progress,
    ) -> Result<TeacherOutput> {
        let samples = self.cfg.samples;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.cfg.concurrency)
            .build()
            .context("starting the request threads")?;
        let abort = AtomicBool::new(false);
        // A dead or misconfigured endpoint fails every episode: stop after this many failed
        // episodes in a row instead of waiting out time-outs on all of them.
        let give_up_after = (2 * self.cfg.concurrency).max(4);
        let in_a_row = AtomicUsize::new(0);
        // Per episode: its conversations, the error that kept it from having any, or None
        // when the run stopped before it.
        let played: Vec<Option<Result<Vec<Candidate>>>> = pool.install(|| {
            episodes
                .par_iter()
                .enumerate()
                .map(|(e, ep)| {
                    let mut out = Vec::new();
                    for s in 0..samples {
                        if abort.load(Ordering::Relaxed) {
                            return None;
                        }
                        let seed = self.seed.wrapping_add((e * samples + s) as u64);
                        match self.play(world, reg, ep, seed) {
                            Ok(c) => {
                                in_a_row.store(0, Ordering::Relaxed);
                                out.push(c);
                            }
                            Err(err) => {
                                let fatal = err.downcast_ref::<Fatal>().is_some();
                                if fatal
                                    || in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= give_up_after
                                {
                                    abort.store(true, Ordering::Relaxed);
                                }
                                if fatal || out.is_empty() {
                                    return Some(Err(err));
                                }
                            }
                        }
                    }
                    bar.inc(1);
                    Some(Ok(out))
                })
                .collect()
        });
        let mut candidates = Vec::with_capacity(played.len());
        let mut failed = 0;
        let mut last_error = None;
        for p in played {
            match p {
                Some(Ok(c)) => candidates.push(c),
                Some(Err(err)) if err.downcast_ref::<Fatal>().is_some() => {
                    return Err(err.context("openai teacher"));
                }
                Some(Err(err)) => {
                    failed += 1;
                    last_error = Some(err);
                    candidates.push(Vec::new());
                }
                None => candidates.push(Vec::new()),
            }
        }
        if let Some(err) = last_error {
            if abort.load(Ordering::Relaxed) || failed == episodes.len() {
                bar.finish_and_clear();
                return Err(err.context(format!(
                    "openai teacher: stopped after {failed} failed episodes ({} played)",
                    candidates.iter().filter(|c| !c.is_empty()).count()
                )));
            }
            bar.println(format!(
                "warning: {failed} of {} episodes failed; the last error: {err:#}",
                episodes.len()
            ));
        }
        Ok(TeacherOutput {
            candidates,
            failed_episodes: failed,
        })
    }
}
