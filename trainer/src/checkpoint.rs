//! Run checkpoints: weights, optimizer moments, and the state needed to resume bit for bit
//! (step, data position, seeds). A checkpoint is written into a temporary directory that is
//! renamed into place, then `latest` is replaced atomically: a crash or kill at any moment
//! leaves the previous checkpoint intact and `latest` pointing at a complete one.
//!
//! Each checkpoint ends with `manifest.json`, written last: every other file's size and
//! SHA-256. `verify` checks them before anything is loaded, so a damaged file (a flipped
//! byte, a truncated copy) is refused naming the file instead of training on silently
//! wrong weights; resuming falls back to the newest checkpoint that verifies
//! (`resume_candidates`). Checkpoints written before manifests existed load with a warning.

use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use lm::fsutil::{write_atomic, write_dir_atomic};
use lm::weights::save_safetensors;
use lm::Model;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The file in each checkpoint that lists the others with their sizes and SHA-256.
pub const MANIFEST: &str = "manifest.json";

/// The files every checkpoint holds (and its manifest must list).
const REQUIRED: [&str; 3] = ["weights.safetensors", "optimizer.safetensors", "state.json"];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// 1.
    version: u32,
    /// File name (in the checkpoint directory) -> size and hash.
    files: BTreeMap<String, FileSum>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSum {
    bytes: u64,
    /// Lowercase hex.
    sha256: String,
}

/// Size and SHA-256 of a file, streamed.
fn file_sum(path: &Path) -> Result<FileSum> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileSum { bytes, sha256 })
}

/// Writes `dir/manifest.json` (atomically) over every other regular file in `dir`.
fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || name.starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        files.insert(name, file_sum(&entry.path())?);
    }
    let m = Manifest { version: 1, files };
    // Compact, without a trailing newline: no byte of it is insignificant whitespace, so a
    // flipped byte anywhere changes what it says (and is refused) rather than its layout.
    write_atomic(&dir.join(MANIFEST), serde_json::to_string(&m)?.as_bytes())
}

/// What `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Every file matches the manifest.
    Checked,
    /// No manifest (a checkpoint from before manifests): loaded unverified.
    Legacy,
}

/// Checks checkpoint `ckpt` against its manifest: every listed file present with its size
/// and SHA-256, and the files a checkpoint needs listed. An error names the file and what
/// differs. A checkpoint without `manifest.json` but with its `state.json` is `Legacy`.
pub fn verify(ckpt: &Path) -> Result<Verified> {
    let mpath = ckpt.join(MANIFEST);
    if !mpath.exists() {
        if !ckpt.join("state.json").exists() {
            bail!(
                "{}: not a complete checkpoint (no {MANIFEST}, no state.json)",
                ckpt.display()
            );
        }
        return Ok(Verified::Legacy);
    }
    let text = std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
    let m: Manifest = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not a checkpoint manifest (damaged?); refusing the checkpoint",
            mpath.display()
        )
    })?;
    if m.version != 1 {
        bail!(
            "{}: manifest version {}, this build reads 1",
            mpath.display(),
            m.version
        );
    }
    for name in REQUIRED {
        if !m.files.contains_key(name) {
            bail!(
                "{}: does not list {name}; refusing the checkpoint",
                mpath.display()
            );
        }
    }
    for (name, want) in &m.files {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("{}: bad file name {name:?}", mpath.display());
        }
        let path = ckpt.join(name);
        if !path.exists() {
            bail!(
                "{}: missing (listed in {MANIFEST}); refusing the checkpoint",
                path.display()
            );
        }
        let got = file_sum(&path)?;
        if got.bytes != want.bytes {
            bail!(
                "{}: {} bytes, {MANIFEST} says {}: the file is damaged or truncated; \
                 refusing the checkpoint",
                path.display(),
                got.bytes,
                want.bytes
            );
        }
        if got.sha256 != want.sha256 {
            bail!(
                "{}: SHA-256 {} does not match {MANIFEST} ({}): the file is damaged; \
                 refusing the checkpoint",
                path.display(),
                got.sha256,
                want.sha256
            );
        }
    }
    Ok(Verified::Checked)
}

/// `verify`, with a warning on stderr for a checkpoint without a manifest.
pub fn verify_or_warn(ckpt: &Path) -> Result<()> {
    if verify(ckpt)? == Verified::Legacy {
        eprintln!(
            "warning: {} has no {MANIFEST} (written before checkpoints carried checksums); \
             loading it unverified",
            ckpt.display()
        );
    }
    Ok(())
}

/// The step of a `step-NNNNNN` directory name.
fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// The tensors a checkpoint stores: adapters only for LoRA runs, every weight otherwise.
pub fn trained_tensors(model: &Model) -> BTreeMap<String, Tensor> {
    let lora = model.has_lora();
    model
        .vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !lora || n.contains("lora_"))
        .collect()
}

/// Writes checkpoint `step` and keeps only the newest `keep` checkpoints (0: keep all).
pub fn save(
    dir: &Path,
    step: usize,
    model: &Model,
    opt: &AdamW,
    state: &serde_json::Value,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("step-{step:06}");
    let target = dir.join(&name);
    write_dir_atomic(&target, |tmp| {
        save_safetensors(
            &trained_tensors(model),
            None,
            &tmp.join("weights.safetensors"),
        )?;
        save_safetensors(&opt.state(), None, &tmp.join("optimizer.safetensors"))?;
        write_atomic(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        // Last: a checkpoint with a manifest is a complete one.
        write_manifest(tmp)
    })
    .with_context(|| format!("writing checkpoint {}", target.display()))?;
    write_atomic(&dir.join("latest"), name.as_bytes())
        .with_context(|| format!("pointing {} at {name}", dir.join("latest").display()))?;
    if keep > 0 {
        let best = best(dir)?.and_then(|b| b.path.file_name().map(|n| n.to_owned()));
        let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
            })
            // The best validated checkpoint is kept whatever its age.
            .filter(|p| best.is_none() || p.file_name() != best.as_deref())
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(keep);
        for old in &steps[..excess] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(target)
}

const BEST: &str = "best.json";

/// Marks checkpoint `name` (in `dir`) as the best so far by `metric` = `value`, with the
/// validation's tool calls per episode where known (selection's tie-break).
pub fn mark_best(
    dir: &Path,
    name: &str,
    metric: &str,
    value: f64,
    tool_calls: Option<f64>,
) -> Result<()> {
    let v = serde_json::json!({"checkpoint": name, "metric": metric, "value": value, "tool_calls": tool_calls});
    write_atomic(
        &dir.join(BEST),
        serde_json::to_string_pretty(&v)?.as_bytes(),
    )
}

/// The checkpoint validation selected (`best.json`).
#[derive(Debug, Clone)]
pub struct Best {
    pub path: PathBuf,
    /// Its validation NDCG@10.
    pub value: f64,
    /// Its validation tool calls per episode (absent in files written before the tie-break).
    pub tool_calls: Option<f64>,
}

impl Best {
    /// Whether a validation scoring `value` with `calls` tool calls per episode replaces
    /// this one: higher NDCG@10, or equal (within 1e-9) with fewer calls.
    pub fn beaten_by(&self, value: f64, calls: Option<f64>) -> bool {
        let cheaper = matches!((calls, self.tool_calls), (Some(c), Some(b)) if c < b - 1e-9);
        value > self.value + 1e-9 || ((value - self.value).abs() <= 1e-9 && cheaper)
    }
}

/// The checkpoint marked best by validation, if any.
pub fn best(dir: &Path) -> Result<Option<Best>> {
    let file = dir.join(BEST);
    if !file.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let (Some(name), Some(value)) = (v["checkpoint"].as_str(), v["value"].as_f64()) else {
        bail!("{}: expected {{\"checkpoint\", \"value\"}}", file.display());
    };
    let path = dir.join(name);
    if !path.join("state.json").exists() {
        bail!(
            "{} names {}, which is missing",
            file.display(),
            path.display()
        );
    }
    Ok(Some(Best {
        path,
        value,
        tool_calls: v["tool_calls"].as_f64(),
    }))
}

/// The checkpoint `latest` points at, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    let file = dir.join("latest");
    if !file.exists() {
        return Ok(None);
    }
    let name =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let path = dir.join(name.trim());
    if !path.join("state.json").exists() {
        bail!(
            "{} points at {}, which is incomplete",
            file.display(),
            path.display()
        );
    }
    Ok(Some(path))
}

/// The checkpoints a resume may start from, newest first: the one `latest` names, then the
/// older `step-N` directories (newer ones than `latest` are not from this run's history: a
/// kill between a checkpoint's rename and `latest`'s, or an earlier, longer run). Without a
/// readable `latest`, every `step-N` directory (said on stderr when `latest` is damaged).
pub fn resume_candidates(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut steps: Vec<(usize, PathBuf)> = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = step_of(&name).filter(|_| entry.path().is_dir()) {
                steps.push((step, entry.path()));
            }
        }
    }
    steps.sort_by_key(|s| std::cmp::Reverse(s.0));
    let file = dir.join("latest");
    let newest = match std::fs::read_to_string(&file) {
        Ok(name) => match step_of(name.trim()) {
            Some(s) if dir.join(name.trim()).is_dir() => Some(s),
            _ => {
                eprintln!(
                    "{} names {:?}, which is not a checkpoint here; trying every step-N",
                    file.display(),
                    name.trim()
                );
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            eprintln!("{}: {e}; trying every step-N", file.display());
            None
        }
    };
    Ok(steps
        .into_iter()
        .filter(|(s, _)| newest.is_none_or(|n| *s <= n))
        .map(|(_, p)| p)
        .collect())
}

pub fn read_state(ckpt: &Path) -> Result<serde_json::Value> {
    let p = ckpt.join("state.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("parsing {}", p.display()))
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// Copies the checkpoint's weights into `model` (which must have the same adapters).
pub fn load_weights(model: &Model, ckpt: &Path) -> Result<()> {
    let saved = read_tensors(&ckpt.join("weights.safetensors"))?;
    let vars = trained_tensors(model);
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let Some(t) = saved.get(&name) else {
                bail!("{}: checkpoint lacks tensor `{name}`", ckpt.display())
            };
            if t.size() != var.size() {
                bail!(
                    "{}: tensor `{name}` has shape {:?}, the model {:?}",
                    ckpt.display(),
                    t.size(),
                    var.size()
                );
            }
            var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}

pub fn load_optimizer(opt: &mut AdamW, ckpt: &Path) -> Result<()> {
    let state = read_tensors(&ckpt.join("optimizer.safetensors"))?;
    let device = opt
        .params
        .first()
        .map(|(_, p)| p.device())
        .unwrap_or(tch::Device::Cpu);
    let state = state
        .into_iter()
        .map(|(k, v)| (k, v.to_device(device)))
        .collect();
    opt.load_state(&state)
}

#[cfg(test)]
mod tests {
    use super::Best;

    #[test]
    fn selection_prefers_higher_ndcg_then_fewer_calls() {
        let b = Best {
            path: "step-000020".into(),
            value: 0.8015,
            tool_calls: Some(3.0),
        };
        assert!(
            b.beaten_by(0.81, Some(6.0)),
            "higher NDCG wins whatever the calls"
        );
        assert!(
            !b.beaten_by(0.80, Some(1.0)),
            "lower NDCG loses whatever the calls"
        );
        assert!(b.beaten_by(0.8015, Some(1.56)), "a tie goes to fewer calls");
        assert!(
            !b.beaten_by(0.8015, Some(3.0)),
            "a full tie keeps the first"
        );
        assert!(!b.beaten_by(0.8015, None), "unknown calls keep the first");
        let old = Best {
            tool_calls: None,
            ..b
        };
        assert!(
            !old.beaten_by(0.8015, Some(1.0)),
            "a best.json without calls keeps ties"
        );
    }
}
