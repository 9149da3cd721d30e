//! A run directory: the resolved config, metrics as JSON lines, and where checkpoints
//! (checkpoint.rs) and plots (plot.rs) go.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn create(root: &Path, resolved_config: &serde_json::Value) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        lm::fsutil::write_atomic(
            &root.join("config.json"),
            serde_json::to_string_pretty(resolved_config)?.as_bytes(),
        )?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
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

    pub fn log(&self, line: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.metrics_path())?;
        writeln!(f, "{line}")?;
        f.sync_data()?;
        Ok(())
    }
}

/// A progress bar `{what} [bar] pos/len {unit} [elapsed<eta] message`, starting at `pos`.
pub fn progress_bar(
    what: &str,
    unit: &str,
    len: usize,
    pos: usize,
) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}}<{{eta}}] {{msg}}"
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    bar.set_position(pos as u64);
    Ok(bar)
}
