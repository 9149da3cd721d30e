//! Opt-in wall-clock accounting of where generation spends its time
//! (`RECTHINKER_PROFILE=1`): named sections (engine prefill and decode forwards, the KV
//! cache's writes and reads, attention, the MLPs, the LM head, tool calls) add their
//! durations and call counts to one process-wide table, which `recthinker eval` prints and
//! writes into its report. On CPU every libtorch op has finished when it returns, so a
//! section's wall time is its cost; on CUDA the sections synchronize first (that costs
//! overlap, so profile runs are for reading, not for benchmarks). Off (the default), a
//! section costs one relaxed load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 off, 2 on
static TABLE: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Whether `RECTHINKER_PROFILE` is set to something other than `0` or empty.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("RECTHINKER_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Runs `f`, adding its wall time to section `name` when profiling is on.
pub fn time<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    sync();
    let t = Instant::now();
    let out = f();
    sync();
    add(name, t.elapsed().as_secs_f64());
    out
}

fn sync() {
    if tch::Cuda::is_available() {
        tch::Cuda::synchronize(0);
    }
}

/// Adds `seconds` (one call) to section `name`.
pub fn add(name: &'static str, seconds: f64) {
    if let Ok(mut t) = TABLE.lock() {
        let e = t.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += seconds;
    }
}

static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Adds `n` to counter `name` (tokens prefilled, forwards run, ...).
pub fn count(name: &'static str, n: u64) {
    if let Ok(mut c) = COUNTS.lock() {
        *c.entry(name).or_insert(0) += n;
    }
}

/// Every counter so far, by name.
pub fn counts() -> Vec<(&'static str, u64)> {
    COUNTS
        .lock()
        .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default()
}

/// Every section so far: (name, calls, seconds), by name.
pub fn snapshot() -> Vec<(&'static str, u64, f64)> {
    TABLE
        .lock()
        .map(|t| t.iter().map(|(k, v)| (*k, v.0, v.1)).collect())
        .unwrap_or_default()
}

/// The table as text, most expensive first, with each section's share of `total` seconds.
pub fn render(total: f64) -> String {
    let mut rows = snapshot();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut s = format!(
        "{:<22} {:>9} {:>10} {:>7}\n",
        "section", "calls", "seconds", "share"
    );
    for (name, calls, secs) in rows {
        s.push_str(&format!(
            "{name:<22} {calls:>9} {secs:>10.2} {:>6.1}%\n",
            100.0 * secs / total.max(1e-9)
        ));
    }
    for (name, n) in counts() {
        s.push_str(&format!("{name:<22} {n:>9}\n"));
    }
    s
}
