//! Readers for the real published formats. Each malformed row is an error naming file:line.

pub mod amazon;
pub mod movielens;
pub mod recbole;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", path.display()))
}

/// Parse helper: `what` from `field` at `path:line`.
pub fn parse<T: std::str::FromStr>(field: &str, what: &str, path: &Path, line: usize) -> Result<T> {
    field.trim().parse::<T>().map_err(|_| {
        anyhow::anyhow!(
            "{}:{line}: {what} `{field}` is not a valid number",
            path.display()
        )
    })
}

/// The one file in `dir` accepted by `pred`, or a clear error.
pub fn find_file(dir: &Path, what: &str, pred: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    found.sort();
    match found.len() {
        0 => bail!("{}: no {what} file found", dir.display()),
        _ => Ok(found.swap_remove(0)),
    }
}
