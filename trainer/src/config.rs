//! Reading TOML configs with errors that name the file and the offending key.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads a config: a wrong type or an unknown key is an error naming the dotted key
/// (`[agent] top_p` -> `agent.top_p`), a value out of its domain too
/// (`config_check::Validate`).
pub fn load<T: DeserializeOwned + crate::config_check::Validate>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: T = toml::from_str(&text).map_err(|e| {
        // A missing key's error spans its whole table: serde's message names the key.
        let key = e
            .span()
            .filter(|_| !e.message().starts_with("missing field"))
            .and_then(|s| key_at(&text, s.start))
            .map(|k| format!("`{k}`: "))
            .unwrap_or_default();
        anyhow::anyhow!("{}: {key}{e}", path.display())
    })?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(cfg)
}

/// The dotted key on the line holding byte `offset` of a TOML text: the last `[table]`
/// header above it and the key before the line's `=` (None when the line has no key).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = before[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_start_matches('[').trim().to_string())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// Defaults shared by the training configs (serde `default = "..."` needs functions).
pub mod defaults {
    pub fn cpu() -> String {
        "cpu".into()
    }
    pub fn off() -> String {
        "off".into()
    }
    pub fn f32() -> String {
        "f32".into()
    }
    pub fn one() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn two() -> usize {
        2
    }
    pub fn three() -> usize {
        3
    }
    pub fn four() -> usize {
        4
    }
    pub fn eight() -> usize {
        8
    }
    pub fn ten() -> usize {
        10
    }
    pub fn sixteen() -> usize {
        16
    }
    pub fn fifty() -> usize {
        50
    }
    pub fn max_len() -> usize {
        2048
    }
}
