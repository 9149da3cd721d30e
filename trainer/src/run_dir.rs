//! A run directory: the resolved config, metrics as JSON lines (`metrics.jsonl`) and as
//! TensorBoard event files (`tb/`, tensorboard.rs), as `report_to` says, and where
//! checkpoints (checkpoint.rs) and plots (plot.rs) go.

use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where a run's metrics go (`report_to` in the training configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// `metrics.jsonl`, one line per step; the PNG plots are drawn from it.
    Jsonl,
    /// TensorBoard event files under `tb/`.
    Tensorboard,
}

/// Both reporters (the default).
pub fn all_reporters() -> Vec<Reporter> {
    vec![Reporter::Jsonl, Reporter::Tensorboard]
}

pub struct RunDir {
    pub root: PathBuf,
    jsonl: bool,
    tensorboard: bool,
    /// Opened by `start_logging`.
    events: Option<Mutex<EventWriter>>,
}

impl RunDir {
    pub fn create(
        root: &Path,
        resolved_config: &serde_json::Value,
        report_to: &[Reporter],
    ) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        lm::fsutil::write_atomic(
            &root.join("config.json"),
            serde_json::to_string_pretty(resolved_config)?.as_bytes(),
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            jsonl: report_to.contains(&Reporter::Jsonl),
            tensorboard: report_to.contains(&Reporter::Tensorboard),
            events: None,
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn tensorboard_dir(&self) -> PathBuf {
        self.root.join("tb")
    }

    /// Starts logging for a run that continues after step `kept` (0: a fresh run): drops
    /// metric lines and TensorBoard events past it, and opens this process's event file.
    pub fn start_logging(&mut self, kept: usize) -> Result<()> {
        if kept == 0 {
            let _ = std::fs::remove_file(self.metrics_path());
        } else {
            self.truncate_metrics(kept)?;
        }
        if self.tensorboard {
            let w = EventWriter::start(&self.tensorboard_dir(), kept)?;
            self.events = Some(Mutex::new(w));
        }
        Ok(())
    }

    /// Keeps only metric lines of steps <= `step` (after a resume from `step`).
    pub fn truncate_metrics(&self, step: usize) -> Result<()> {
        let p = self.metrics_path();
        if !p.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&p)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= step)
            })
            .collect();
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        lm::fsutil::write_atomic(&p, body.as_bytes())
    }

    /// Records one step's metrics (`line["step"]` and its numeric values).
    pub fn log(&self, line: &serde_json::Value) -> Result<()> {
        if self.jsonl {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.metrics_path())?;
            // One write of the whole line: a kill leaves at most one torn last line, which
            // `truncate_metrics` drops on resume.
            f.write_all(format!("{line}\n").as_bytes())?;
            f.sync_data()?;
        }
        if let (Some(events), Some(step)) = (&self.events, line["step"].as_u64()) {
            let values: Vec<(String, f64)> = line
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "step")
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect();
            let mut w = events.lock().unwrap_or_else(|e| e.into_inner());
            w.scalars(step, &values)?;
        }
        Ok(())
    }

    /// Redraws the PNG plots from `metrics.jsonl` (when written). A failure (no font, say)
    /// is a warning: plots are not worth stopping a run for.
    pub fn redraw_plots(&self) {
        if self.jsonl {
            if let Err(e) = crate::plot::plot_metrics(&self.root) {
                eprintln!("warning: plots not drawn: {e:#}");
            }
        }
    }
}

/// `name value` for each of `keys` present in a metrics line, for progress messages
/// (`loss 0.0912 lr 1.5e-4`).
pub fn summary(line: &serde_json::Value, keys: &[&str]) -> String {
    let shown: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let v = line[*k].as_f64()?;
            Some(if v != 0.0 && v.abs() < 1e-3 {
                format!("{k} {v:.1e}")
            } else {
                format!("{k} {v:.4}")
            })
        })
        .collect();
    shown.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_shows_present_keys_in_order() {
        let line = serde_json::json!({"step": 3, "loss": 0.09123, "lr": 0.00015, "tokens": 7});
        assert_eq!(
            super::summary(&line, &["loss", "lr", "val_ndcg@10"]),
            "loss 0.0912 lr 1.5e-4"
        );
    }
}
