//! Reading TOML configs with errors that name the file and the offending key.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
