//! What the SFT and GRPO loops share: starting a run (device, dtype, policy, LoRA, optimizer,
//! resume), saving its checkpoints, the seeded data order, and padding rows into tensors.

use crate::checkpoint;
use crate::optim::AdamW;
use crate::run_dir::{Reporter, RunDir};
use anyhow::{Context, Result};
use lm::device::{parse_device, parse_dtype};
use lm::lora::LoraConfig;
use lm::{Model, Policy};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The parts of a training config that say what a run starts from, where it writes and when
/// it saves.
pub struct RunSpec<'a> {
    /// `sft` or `grpo`, recorded in each checkpoint.
    pub kind: &'static str,
    pub run_dir: &'a Path,
    pub model: &'a Path,
    pub device: &'a str,
    pub dtype: &'a str,
    pub seed: u64,
    pub lora: Option<&'a LoraConfig>,
    pub steps: usize,
    pub save_every: usize,
    pub keep_checkpoints: usize,
    pub report_to: &'a [Reporter],
}

/// A started run: the policy being trained, its optimizer, the run directory, and the step
/// to continue from.
pub struct Trainee {
    pub device: Device,
    pub kind: Kind,
    pub policy: Policy,
    pub opt: AdamW,
    pub run: RunDir,
    /// 0 for a fresh run, the checkpoint's step after a resume.
    pub start: usize,
    /// What each checkpoint's `state.json` records besides the step, and when to save.
    state: serde_json::Value,
    steps: usize,
    save_every: usize,
    keep_checkpoints: usize,
}

impl Trainee {
    /// Loads the policy on its device and dtype, attaches LoRA adapters when configured
    /// (their init draws from libtorch's RNG, which the caller seeds), writes the resolved
    /// config into the run directory, and builds the optimizer over the trainable
    /// parameters. With `resume`, the run's latest checkpoint is loaded into the policy and
    /// the optimizer and metrics past it are dropped; otherwise metrics start anew.
    pub fn start(spec: &RunSpec, resolved_config: &impl Serialize, resume: bool) -> Result<Self> {
        let device = parse_device(spec.device)?;
        let kind = parse_dtype(spec.dtype)?;
        let mut policy = Policy::load(spec.model, device, kind)?;
        if let Some(l) = spec.lora {
            policy.model.add_lora(l)?;
        }
        let mut run = RunDir::create(
            spec.run_dir,
            &serde_json::to_value(resolved_config)?,
            spec.report_to,
        )?;
        let mut opt = AdamW::new(trainable(&policy.model));
        let start = resume_or_start(&run, &policy.model, &mut opt, resume)?;
        run.start_logging(start)?;
        Ok(Self {
            device,
            kind,
            policy,
            opt,
            run,
            start,
            state: serde_json::json!({"kind": spec.kind, "base_model": spec.model, "lora": spec.lora, "dtype": spec.dtype, "seed": spec.seed}),
            steps: spec.steps,
            save_every: spec.save_every,
            keep_checkpoints: spec.keep_checkpoints,
        })
    }

    /// Whether `done` steps end on a checkpoint: every `save_every` steps, and the last.
    pub fn checkpoint_due(&self, done: usize) -> bool {
        done.is_multiple_of(self.save_every.max(1)) || done == self.steps
    }

    /// Checkpoint selection: after validation at `done` steps scored `value` (NDCG@10), makes
    /// that step's checkpoint (saving it if the step was not due) the run's best when it
    /// beats the previous best. `recthinker export --select best` exports it.
    pub fn record_validation(&self, done: usize, value: f64) -> Result<bool> {
        let dir = self.run.checkpoints();
        if checkpoint::best(&dir)?.is_some_and(|(_, best)| best >= value) {
            return Ok(false);
        }
        let name = format!("step-{done:06}");
        if !dir.join(&name).join("state.json").exists() {
            self.save_checkpoint(done)?;
        }
        checkpoint::mark_best(&dir, &name, "val_ndcg@10", value)?;
        Ok(true)
    }

    /// Writes checkpoint `done` (weights, optimizer, state; see checkpoint.rs), keeping the
    /// newest `keep_checkpoints` (and the best validated one).
    pub fn save_checkpoint(&self, done: usize) -> Result<PathBuf> {
        let mut state = serde_json::json!({ "step": done });
        if let (Some(s), Some(fixed)) = (state.as_object_mut(), self.state.as_object()) {
            s.extend(fixed.clone());
        }
        checkpoint::save(
            &self.run.checkpoints(),
            done,
            &self.policy.model,
            &self.opt,
            &state,
            self.keep_checkpoints,
        )
    }
}

/// With `resume`, loads the run's latest checkpoint into `model` and `opt` and returns its
/// step; otherwise (or without a checkpoint) 0.
fn resume_or_start(run: &RunDir, model: &Model, opt: &mut AdamW, resume: bool) -> Result<usize> {
    if !resume {
        return Ok(0);
    }
    let Some(ck) = checkpoint::latest(&run.checkpoints())? else {
        eprintln!(
            "no checkpoint in {}; starting fresh",
            run.checkpoints().display()
        );
        return Ok(0);
    };
    checkpoint::load_weights(model, &ck)?;
    checkpoint::load_optimizer(opt, &ck)?;
    let step = checkpoint::read_state(&ck)?["step"]
        .as_u64()
        .context("checkpoint state has no step")? as usize;
    eprintln!("resumed from {} at step {step}", ck.display());
    Ok(step)
}

/// The trainable parameters, by name (adapters only under LoRA).
pub fn trainable(model: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Example indices of step `step`: epochs are seeded permutations, so the data position
/// follows from the step alone (and resumes exactly).
pub fn batch_indices(n: usize, seed: u64, step: usize, batch: usize) -> Vec<usize> {
    (0..batch)
        .map(|j| {
            let pos = step * batch + j;
            let (epoch, k) = (pos / n, pos % n);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
            ));
            order[k]
        })
        .collect()
}

/// Right-pads (ids, mask) rows with 0 into [rows, longest] tensors.
pub fn pad_rows(rows: &[(&[i64], &[u8])], device: Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
    let mut ids = vec![0i64; rows.len() * t];
    let mut mask = vec![0u8; rows.len() * t];
    for (b, (row_ids, row_mask)) in rows.iter().enumerate() {
        ids[b * t..b * t + row_ids.len()].copy_from_slice(row_ids);
        mask[b * t..b * t + row_mask.len()].copy_from_slice(row_mask);
    }
    let shape = [rows.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}
