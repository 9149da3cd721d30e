//! Datasets: readers for the real published formats, preprocessing into leave-one-out
//! episodes with 1+9 candidates, and the HDF5 store everything downstream reads.

pub mod prepare;
pub mod raw;
pub mod readers;
pub mod store;

pub use prepare::{prepare, Episode, Event, PrepareConfig, Prepared, Split, Subset};
pub use raw::RawDataset;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The MovieLens-100k files shipped by PyPI `recbole==1.2.1` in the project's venv: the
/// working directory's `.venv` (a binary copied or built elsewhere, run from the project),
/// else the venv of the checkout the binary was built from.
pub fn default_ml100k_dir() -> Option<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join(".venv/lib");
    [PathBuf::from(".venv/lib"), built]
        .iter()
        .find_map(|root| ml100k_in(root))
}

fn ml100k_in(venv_lib: &Path) -> Option<PathBuf> {
    let mut found = None;
    for entry in std::fs::read_dir(venv_lib).ok()?.flatten() {
        let dir = entry
            .path()
            .join("site-packages/recbole/dataset_example/ml-100k");
        if dir.join("ml-100k.inter").exists() {
            found = Some(dir);
        }
    }
    found
}

/// Reads `dataset` (ml-100k | ml-1m | amazon2018 | amazon2023) from `input`.
pub fn read_raw(dataset: &str, input: Option<&Path>) -> Result<RawDataset> {
    match dataset {
        "ml-100k" => {
            let dir = match input {
                Some(d) => d.to_path_buf(),
                None => match default_ml100k_dir() {
                    Some(d) => d,
                    None => bail!("MovieLens-100k not found in .venv (run scripts/setup.sh) and no --input given"),
                },
            };
            if dir.join("ml-100k.inter").exists() {
                readers::recbole::read(&dir, "ml-100k")
            } else if dir.join("u.data").exists() {
                readers::movielens::read_ml100k(&dir)
            } else {
                bail!(
                    "{}: neither ml-100k.inter (RecBole) nor u.data (GroupLens) found",
                    dir.display()
                )
            }
        }
        "ml-1m" | "amazon2018" | "amazon2023" => {
            let Some(dir) = input else {
                bail!("--input DIR is required for {dataset}")
            };
            match dataset {
                "ml-1m" => readers::movielens::read_ml1m(dir),
                "amazon2018" => readers::amazon::read_2018(dir),
                _ => readers::amazon::read_2023(dir),
            }
        }
        other => bail!("--dataset `{other}`: expected ml-100k, ml-1m, amazon2018 or amazon2023"),
    }
}
