//! Counters the engine thread and the HTTP side share, shown by `GET /health`.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct Stats {
    /// Jobs accepted and waiting in the channel for the engine thread.
    pub queued: AtomicUsize,
    /// Jobs (requests) and rows (choices) in the engine now.
    pub running_requests: AtomicUsize,
    pub running_rows: AtomicUsize,
    /// Requests finished by the engine.
    pub served: AtomicUsize,
    /// Requests dropped because their client left (queued or mid-generation).
    pub cancelled: AtomicUsize,
    /// Requests the engine failed.
    pub failed: AtomicUsize,
    /// Requests refused because the queue was full (429).
    pub rejected: AtomicUsize,
    /// Requests refused as malformed (4xx).
    pub invalid: AtomicUsize,
}

impl Stats {
    pub fn set_running(&self, requests: usize, rows: usize) {
        self.running_requests.store(requests, Ordering::Relaxed);
        self.running_rows.store(rows, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        json!({
            "queued": get(&self.queued),
            "running_requests": get(&self.running_requests),
            "running_rows": get(&self.running_rows),
            "served": get(&self.served),
            "cancelled": get(&self.cancelled),
            "failed": get(&self.failed),
            "rejected": get(&self.rejected),
            "invalid": get(&self.invalid),
        })
    }
}
