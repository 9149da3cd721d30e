//! Reading TOML configs with errors that name the file and the offending key.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Defaults shared by the training configs (serde `default = "..."` needs functions).
pub mod defaults {
    pub fn cpu() -> String {
        "cpu".into()
    }
    pub fn f32() -> String {
        "f32".into()
    }
    pub fn one() -> usize {
        1
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
