//! GRPO's rollouts on disk (`save_rollouts`): each step's sampled conversations with their
//! reward and advantage, as `eval --trajectories` lines, so what the policy tried (which
//! tools, which evidence, which answers) can be read or viewed (`recthinker view`).

use crate::trajectory::{to_json, Scored};
use anyhow::{Context, Result};
use datasets::{Episode, Prepared};
use std::io::Write;
use std::path::Path;

/// Writes `run/rollouts/step-NNNNNN.jsonl` (`-rankR` when data parallel) atomically: one
/// line per row, with `step` and `advantage` (null: a group without reward variance).
pub fn save_rollouts(
    run: &Path,
    step: usize,
    rank: Option<usize>,
    scored: &[Scored],
    adv: &[Option<f64>],
    eps: &[&Episode],
    data: &Prepared,
) -> Result<()> {
    let dir = run.join("rollouts");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = match rank {
        Some(r) => format!("step-{step:06}-rank{r}.jsonl"),
        None => format!("step-{step:06}.jsonl"),
    };
    let path = dir.join(name);
    lm::fsutil::write_atomic_with(&path, |out| {
        for (s, a) in scored.iter().zip(adv) {
            let mut v = to_json(s, eps[s.row.episode], data, "train", false);
            v["step"] = serde_json::json!(step);
            v["advantage"] = serde_json::json!(a);
            writeln!(out, "{v}")?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}
