//! `recthinker view`: static, self-contained HTML pages to look at what the project writes.
//!
//! - `view TRAJ.jsonl [--out X.html]`: trajectories (`eval --trajectories`, the SFT set of
//!   `synth`, `baseline --per-episode`) as a sortable, filterable table of episodes and each
//!   episode's conversation turn by turn (`trajectories`).
//! - `view RUN_DIR [--out RUN_DIR/report.html]`: a run's `metrics.jsonl` as SVG curves beside
//!   the run's PNG plots (`run`).
//!
//! A page is one file: CSS, JavaScript, data (JSON in `<script type="application/json">`) and
//! images (`data:` URLs) inline, and a Content-Security-Policy that allows no network at all
//! and only the page's own scripts. Everything from the data is written as text: model output
//! is hostile input.

mod html;
pub mod run;
mod svg;
pub mod trajectories;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A trajectory file (JSON lines: eval --trajectories, synth output, baseline
    /// --per-episode) or a run directory (with metrics.jsonl).
    pub input: PathBuf,
    /// The HTML file to write (default: the input with .html for a file, RUN_DIR/report.html
    /// for a run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What `view` wrote.
pub struct Written {
    pub path: PathBuf,
    /// `N episodes` or `N metrics`.
    pub what: String,
}

/// The default output for `input`.
pub fn default_out(input: &Path) -> PathBuf {
    if input.is_dir() {
        input.join("report.html")
    } else {
        input.with_extension("html")
    }
}

/// Writes the page for `a.input`.
pub fn run(a: &Args) -> Result<Written> {
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.input));
    if out == a.input {
        bail!("--out {} is the input itself", out.display());
    }
    let (page, what) = if a.input.is_dir() {
        let series = run::read_metrics(&a.input)?;
        (
            run::page(&a.input, &series)?,
            format!("{} metrics", series.len()),
        )
    } else {
        if !a.input.exists() {
            bail!("{}: no such file or run directory", a.input.display());
        }
        let episodes = trajectories::read(&a.input)?;
        (
            trajectories::page(&a.input, &episodes)?,
            format!("{} episodes", episodes.len()),
        )
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    lm::fsutil::write_atomic(&out, page.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(Written { path: out, what })
}
