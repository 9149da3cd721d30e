//! Progress of long commands, readable on a terminal and in a log file. On a terminal
//! (stderr is a tty) a `Progress` is an indicatif bar; otherwise (`... > train.log 2>&1`,
//! Slurm) it prints plain lines such as
//! `sft 3/40 steps loss 0.0912 lr 1.5e-4 (12.3 s/step, 36.9 s elapsed, eta 453 s)`:
//! one every `every` units (the default aims at about 20 lines a run; training loops ask
//! for one a step), at least one a minute while units finish, and one at the end.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this long between two lines while units keep finishing.
const MAX_QUIET: Duration = Duration::from_secs(60);

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: Option<Mutex<Lines>>,
}

struct Lines {
    what: String,
    unit: String,
    len: u64,
    pos: u64,
    /// Where this process started counting (a resumed run starts past 0).
    start_pos: u64,
    start: Instant,
    every: u64,
    printed_pos: u64,
    printed_at: Instant,
    msg: String,
}

impl Progress {
    /// `what pos/len unit message`, starting at `pos` (e.g. a resumed run's step).
    pub fn new(what: &str, unit: &str, len: usize, pos: usize) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(len as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                "{what} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}}<{{eta}}] {{msg}}"
            )) {
                bar.set_style(style);
            }
            bar.set_position(pos as u64);
            return Self {
                bar: Some(bar),
                lines: None,
            };
        }
        let now = Instant::now();
        Self {
            bar: None,
            lines: Some(Mutex::new(Lines {
                what: what.into(),
                unit: unit.into(),
                len: len as u64,
                pos: pos as u64,
                start_pos: pos as u64,
                start: now,
                every: (len as u64).div_ceil(20).max(1),
                printed_pos: pos as u64,
                printed_at: now,
                msg: String::new(),
            })),
        }
    }

    /// Shows nothing.
    pub fn hidden() -> Self {
        Self {
            bar: None,
            lines: None,
        }
    }

    /// Without a terminal, a line every `n` units (and at the end).
    pub fn every(self, n: usize) -> Self {
        if let Some(l) = &self.lines {
            lock(l).every = n.max(1) as u64;
        }
        self
    }

    /// The text after the counts; shown with the next update.
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(b) = &self.bar {
            b.set_message(msg);
        } else if let Some(l) = &self.lines {
            lock(l).msg = msg;
        }
    }

    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        } else if let Some(l) = &self.lines {
            let mut l = lock(l);
            l.pos += n;
            let due = l.pos >= l.printed_pos + l.every
                || l.pos >= l.len
                || l.printed_at.elapsed() >= MAX_QUIET;
            if due {
                l.print();
            }
        }
    }

    /// A line of its own (above the bar on a terminal).
    pub fn println(&self, text: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(text.as_ref()),
            None => eprintln!("{}", text.as_ref()),
        }
    }

    /// Leaves the bar as it is; without a terminal, prints the last state if it was not.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        } else if let Some(l) = &self.lines {
            let mut l = lock(l);
            if l.printed_pos != l.pos {
                l.print();
            }
        }
    }

    /// Removes the bar (nothing to do without a terminal).
    pub fn finish_and_clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn lock(l: &Mutex<Lines>) -> std::sync::MutexGuard<'_, Lines> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lines {
    fn print(&mut self) {
        eprintln!("{}", self.line(self.start.elapsed()));
        self.printed_pos = self.pos;
        self.printed_at = Instant::now();
    }

    fn line(&self, elapsed: Duration) -> String {
        let mut s = format!("{} {}/{} {}", self.what, self.pos, self.len, self.unit);
        if !self.msg.is_empty() {
            s.push(' ');
            s.push_str(&self.msg);
        }
        let done = self.pos.saturating_sub(self.start_pos);
        let secs = elapsed.as_secs_f64();
        if done > 0 && secs > 0.0 {
            let each = secs / done as f64;
            let rate = if each >= 1.0 {
                let one = self.unit.strip_suffix('s').unwrap_or(&self.unit);
                format!("{each:.1} s/{one}")
            } else {
                format!("{:.2} {}/s", 1.0 / each, self.unit)
            };
            let left = self.len.saturating_sub(self.pos) as f64 * each;
            s.push_str(&format!(" ({rate}, {secs:.1} s elapsed, eta {left:.0} s)"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(unit: &str, len: u64, start_pos: u64, pos: u64, msg: &str) -> Lines {
        let now = Instant::now();
        Lines {
            what: "sft".into(),
            unit: unit.into(),
            len,
            pos,
            start_pos,
            start: now,
            every: 1,
            printed_pos: start_pos,
            printed_at: now,
            msg: msg.into(),
        }
    }

    #[test]
    fn lines_show_counts_message_rate_and_eta() {
        let l = lines("steps", 40, 0, 3, "loss 0.0912 lr 1.5e-4");
        assert_eq!(
            l.line(Duration::from_secs_f64(36.9)),
            "sft 3/40 steps loss 0.0912 lr 1.5e-4 (12.3 s/step, 36.9 s elapsed, eta 455 s)"
        );
        // Fast units as a rate; a resumed run counts only its own units.
        let l = lines("episodes", 100, 10, 26, "");
        assert_eq!(
            l.line(Duration::from_secs(4)),
            "sft 26/100 episodes (4.00 episodes/s, 4.0 s elapsed, eta 18 s)"
        );
        assert_eq!(
            lines("steps", 5, 2, 2, "").line(Duration::ZERO),
            "sft 2/5 steps"
        );
    }
}
