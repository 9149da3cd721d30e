//! The engine thread: one thread owns the model and one `lm::engine::Engine` for the life of
//! the server, takes jobs (one request, `n` rows) from a bounded channel and runs the
//! engine's continuous batching over them: a job's rows join the batch as soon as there are
//! free rows (at most `max_batch` in flight), every step gives each running row a token, and
//! each job's events (content deltas for streams, then one end per choice) go back on the
//! job's own channel. The engine's prefix cache persists across requests, so a system prompt
//! that many requests share is prefilled once.
//!
//! The thread never waits on a client: events go on an unbounded per-job channel, which at
//! most holds one job's tokens (`max_tokens` is bounded by the context). A job whose receiver
//! is gone (the client disconnected, or the HTTP side dropped the request) is cancelled at
//! the next step and its rows released.

use super::reply::{ChoiceText, Final};
use super::stats::Stats;
use lm::engine::{Engine, RowId, RowState, StopReason};
use lm::sampling::SamplingParams;
use lm::tokenizer::Tokenizer;
use lm::Model;
use rand::Rng;
use rollout::protocol::TOOL_CALL;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// One request for the engine.
pub struct Job {
    pub prompt: Vec<i64>,
    /// One per choice (seeds differ).
    pub choices: Vec<SamplingParams>,
    /// The request's stop sequences (the rows also stop at `</tool_call>` when tools are on).
    pub stops: Vec<String>,
    pub tools: bool,
    pub stream: bool,
    pub events: UnboundedSender<Event>,
}

impl Job {
    /// Sampling settings per choice: the request's, with `seed + i` for choice i (a random
    /// seed when none was given), and `</tool_call>` as an extra stop when tools are on (one
    /// call per reply, as the agent protocol).
    pub fn sampling(
        base: &SamplingParams,
        n: usize,
        seed: Option<u64>,
        tools: bool,
    ) -> Vec<SamplingParams> {
        let seed = seed.unwrap_or_else(|| rand::rng().random());
        (0..n)
            .map(|i| {
                let mut p = base.clone();
                p.seed = seed.wrapping_add(i as u64);
                if tools {
                    p.stop.push(TOOL_CALL.1.to_string());
                }
                p
            })
            .collect()
    }
}

pub enum Event {
    /// Content that became safe to show (streams only).
    Text { index: usize, text: String },
    End {
        index: usize,
        end: Final,
        completion_tokens: usize,
    },
    /// The engine failed; the request cannot finish.
    Failed(String),
}

struct Live {
    job: Job,
    /// (row, its text tracker, done).
    rows: Vec<(RowId, ChoiceText, bool)>,
}

/// The engine thread's settings.
pub struct Worker {
    pub max_batch: usize,
    /// Make a fresh engine (dropping its prefix cache) when idle and holding more rows than
    /// this: finished rows keep a small record each.
    pub recycle_after_rows: usize,
}

impl Worker {
    /// Serves jobs until the channel closes and every accepted job is done.
    pub fn run(&self, model: &Model, tok: &Tokenizer, jobs: Receiver<Job>, stats: &Stats) {
        let eos_text: HashMap<i64, String> = tok
            .eos_ids
            .iter()
            .map(|&id| (id, tok.decode(&[id], false).unwrap_or_default()))
            .collect();
        let mut engine = Engine::new(model, tok);
        let mut live: Vec<Live> = Vec::new();
        let mut held: Option<Job> = None;
        loop {
            // Admit jobs while rows are free.
            loop {
                let in_flight: usize = live.iter().map(|l| l.rows.len()).sum();
                let free = self.max_batch.saturating_sub(in_flight);
                if free == 0 {
                    break;
                }
                let (job, fresh) = match held.take() {
                    Some(j) => (j, false),
                    None if live.is_empty() => {
                        match jobs.recv_timeout(Duration::from_millis(200)) {
                            Ok(j) => (j, true),
                            Err(RecvTimeoutError::Timeout) => {
                                if engine.rows().len() > self.recycle_after_rows {
                                    engine = Engine::new(model, tok);
                                }
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    None => match jobs.try_recv() {
                        Ok(j) => (j, true),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    },
                };
                if fresh {
                    stats.queued.fetch_sub(1, Ordering::Relaxed);
                }
                if job.events.is_closed() {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if job.choices.len() > free {
                    held = Some(job);
                    break;
                }
                match add_rows(&mut engine, &job) {
                    Ok(rows) => live.push(Live { job, rows }),
                    Err(e) => {
                        let _ = job.events.send(Event::Failed(e));
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Clients that left.
            live.retain(|l| {
                let gone = l.job.events.is_closed();
                if gone {
                    for &(id, _, _) in &l.rows {
                        engine.finish(id);
                        engine.forget(id);
                    }
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                !gone
            });
            stats.set_running(live.len(), live.iter().map(|l| l.rows.len()).sum());
            if live.is_empty() {
                continue;
            }
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| engine.step()));
            let error = match stepped {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(p) => Some(panic_text(p)),
            };
            if let Some(e) = error {
                eprintln!("recthinker serve: the engine failed: {e}; failing {} requests and starting a fresh engine", live.len());
                for l in live.drain(..) {
                    let _ = l.job.events.send(Event::Failed(e.clone()));
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                engine = Engine::new(model, tok);
                stats.set_running(0, 0);
                continue;
            }
            for l in &mut live {
                deliver(&mut engine, l, &eos_text);
            }
            live.retain(|l| {
                let done = l.rows.iter().all(|r| r.2);
                if done {
                    stats.served.fetch_add(1, Ordering::Relaxed);
                }
                !done
            });
            stats.set_running(live.len(), live.iter().map(|l| l.rows.len()).sum());
        }
    }
}

fn add_rows(engine: &mut Engine, job: &Job) -> Result<Vec<(RowId, ChoiceText, bool)>, String> {
    let mut rows = Vec::new();
    for p in &job.choices {
        match engine.add_row(&job.prompt, p.clone()) {
            Ok(id) => rows.push((id, ChoiceText::new(job.stops.clone(), job.tools), false)),
            Err(e) => {
                for &(id, _, _) in &rows {
                    engine.finish(id);
                    engine.forget(id);
                }
                return Err(format!("{e:#}"));
            }
        }
    }
    Ok(rows)
}

/// Sends a job's new content and the ends of its rows that stopped.
fn deliver(engine: &mut Engine, l: &mut Live, eos_text: &HashMap<i64, String>) {
    for (index, (id, text, done)) in l.rows.iter_mut().enumerate() {
        if *done {
            continue;
        }
        let row = engine.row(*id);
        match &row.state {
            RowState::Running => {
                if l.job.stream {
                    if let Some(t) = text.delta(row.turn_text()) {
                        let _ = l.job.events.send(Event::Text { index, text: t });
                    }
                }
            }
            RowState::Stopped(reason) => {
                let mut turn = row.turn_text();
                if *reason == StopReason::Eos {
                    if let Some(t) = row.ids.last().and_then(|t| eos_text.get(t)) {
                        turn = turn.strip_suffix(t.as_str()).unwrap_or(turn);
                    }
                }
                let end = text.finish(turn, reason, call_id);
                let completion_tokens = row.sampled_total;
                engine.finish(*id);
                engine.forget(*id);
                *done = true;
                let _ = l.job.events.send(Event::End {
                    index,
                    end,
                    completion_tokens,
                });
            }
            RowState::Finished => *done = true,
        }
    }
}

/// `call_` and 24 random letters and digits.
pub fn call_id() -> String {
    format!("call_{}", random_tag(24))
}

pub fn random_tag(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => format!("panic: {s}"),
        (_, Some(s)) => format!("panic: {s}"),
        _ => "panic".to_string(),
    }
}

/// Loads nothing itself: `spawn` gives the thread the model; the HTTP side keeps the
/// tokenizer (shared) for prompts.
pub fn spawn(
    worker: Worker,
    model: Model,
    tok: Arc<Tokenizer>,
    jobs: Receiver<Job>,
    stats: Arc<Stats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("recthinker-engine".into())
        .spawn(move || worker.run(&model, &tok, jobs, &stats))
}
