//! Run checkpoints: weights, optimizer moments, and the state needed to resume bit for bit
//! (step, data position, seeds). A checkpoint is written into a temporary directory that is
//! renamed into place, then `latest` is replaced atomically: a crash or kill at any moment
//! leaves the previous checkpoint intact and `latest` pointing at a complete one.

use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use lm::fsutil::{write_atomic, write_dir_atomic};
use lm::weights::save_safetensors;
use lm::Model;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

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
        )
    })?;
    write_atomic(&dir.join("latest"), name.as_bytes())?;
    if keep > 0 {
        let best = best(dir)?.and_then(|(p, _)| p.file_name().map(|n| n.to_owned()));
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

/// Marks checkpoint `name` (in `dir`) as the best so far by `metric` = `value`.
pub fn mark_best(dir: &Path, name: &str, metric: &str, value: f64) -> Result<()> {
    let v = serde_json::json!({"checkpoint": name, "metric": metric, "value": value});
    write_atomic(
        &dir.join(BEST),
        serde_json::to_string_pretty(&v)?.as_bytes(),
    )
}

/// The checkpoint marked best by validation, with its value, if any.
pub fn best(dir: &Path) -> Result<Option<(PathBuf, f64)>> {
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
    Ok(Some((path, value)))
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
