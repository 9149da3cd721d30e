//! Readers for the real published formats. Each malformed row is an error naming file:line.

pub mod amazon;
pub mod movielens;
pub mod recbole;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A UTF-8 file's text; invalid bytes are an error naming the line they are on.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        anyhow::anyhow!("{}:{line}: not UTF-8 (byte {at})", path.display())
    })
}

/// Parse helper: `what` from `field` at `path:line`.
pub fn parse<T: std::str::FromStr>(field: &str, what: &str, path: &Path, line: usize) -> Result<T> {
    field.trim().parse::<T>().map_err(|_| {
        anyhow::anyhow!(
            "{}:{line}: {what} `{}` is not a valid number",
            path.display(),
            cut(field)
        )
    })
}

/// A finite number (`nan`, `inf` and overflowing values are errors) from `field` at
/// `path:line`.
pub fn parse_finite<T: std::str::FromStr + Into<f64> + Copy>(
    field: &str,
    what: &str,
    path: &Path,
    line: usize,
) -> Result<T> {
    let v: T = parse(field, what, path, line)?;
    if !v.into().is_finite() {
        bail!(
            "{}:{line}: {what} `{}` is not a finite number",
            path.display(),
            cut(field)
        );
    }
    Ok(v)
}

/// At most 40 characters of a field, for error messages.
fn cut(field: &str) -> String {
    let mut s: String = field.chars().take(40).collect();
    if field.chars().count() > 40 {
        s.push('…');
    }
    s
}

/// A file without a single row is an error naming it (an empty or cut-off download).
pub fn require_rows(n: usize, path: &Path, first_line: usize) -> Result<()> {
    if n == 0 {
        bail!("{}:{first_line}: no rows (empty file)", path.display());
    }
    Ok(())
}

/// Records that metadata `id` was read at `path:line`; an id read before is an error
/// naming both lines (a duplicate id in a MovieLens or RecBole metadata file is a corrupt
/// file, not a re-rating).
pub fn first_time(
    seen: &mut std::collections::HashMap<String, usize>,
    id: &str,
    path: &Path,
    line: usize,
) -> Result<()> {
    if let Some(first) = seen.insert(id.to_string(), line) {
        bail!(
            "{}:{line}: duplicate id `{}` (first on line {first})",
            path.display(),
            cut(id)
        );
    }
    Ok(())
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
