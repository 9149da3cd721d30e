//! What the SFT and GRPO loops share: starting a run (device, dtype, policy, LoRA, optimizer,
//! resume), saving its checkpoints, guarding optimizer steps against non-finite losses and
//! gradients, the seeded data order, and padding rows into tensors.
//!
//! Two environment variables exist for the fault tests only (trainer/tests/faults.rs):
//! `RECTHINKER_DEBUG_NONFINITE=KIND@STEP[,KIND@STEP...]` poisons step STEP (1-based) after
//! its backward pass, KIND `loss` (a NaN term added to the loss: every gradient NaN) or
//! `grad` (an infinite term on the first trainable parameter's gradient), and
//! `RECTHINKER_DEBUG_PHASES=1` prints `phase: step N rollout|train|checkpoint|saved` lines
//! on stderr, so a test can kill a run inside a given phase.

use crate::checkpoint;
use crate::optim::{AdamW, NonFinite};
use crate::run_dir::{Reporter, RunDir};
use anyhow::{bail, Context, Result};
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
    /// Steps skipped for a non-finite loss or gradient so far (`[optim] nonfinite = "skip"`),
    /// kept in checkpoints so a resumed run counts on.
    pub skipped_nonfinite: usize,
    /// `RECTHINKER_DEBUG_NONFINITE`: (step, fault) pairs to inject (tests only).
    debug_faults: Vec<(usize, DebugFault)>,
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
        report_file_size_limit_as_error();
        let debug_faults = debug_faults()?;
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
        let (start, skipped_nonfinite) = resume_or_start(&run, &policy.model, &mut opt, resume)?;
        run.start_logging(start)?;
        Ok(Self {
            device,
            kind,
            policy,
            opt,
            run,
            start,
            skipped_nonfinite,
            debug_faults,
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

    /// Checkpoint selection: after validation at `done` steps scored `value` (NDCG@10) with
    /// `calls` tool calls per episode, makes that step's checkpoint (saving it if the step was
    /// not due) the run's best when it beats the previous best, or ties it (within 1e-9) with
    /// fewer calls: at equal accuracy the cheaper agent. `recthinker export --select best`
    /// exports it.
    pub fn record_validation(&self, done: usize, value: f64, calls: Option<f64>) -> Result<bool> {
        let dir = self.run.checkpoints();
        if checkpoint::best(&dir)?.is_some_and(|b| !b.beaten_by(value, calls)) {
            return Ok(false);
        }
        let name = format!("step-{done:06}");
        if !dir.join(&name).join("state.json").exists() {
            self.save_checkpoint(done)?;
        }
        checkpoint::mark_best(&dir, &name, "val_ndcg@10", value, calls)?;
        Ok(true)
    }

    /// Writes checkpoint `done` (weights, optimizer, state; see checkpoint.rs), keeping the
    /// newest `keep_checkpoints` (and the best validated one).
    /// A write that fails (a full disk) is an error naming the checkpoint; the previous
    /// checkpoint and `latest` are left as they were.
    pub fn save_checkpoint(&self, done: usize) -> Result<PathBuf> {
        debug_phase(done, "checkpoint");
        let mut state =
            serde_json::json!({ "step": done, "skipped_nonfinite": self.skipped_nonfinite });
        if let (Some(s), Some(fixed)) = (state.as_object_mut(), self.state.as_object()) {
            s.extend(fixed.clone());
        }
        let saved = checkpoint::save(
            &self.run.checkpoints(),
            done,
            &self.policy.model,
            &self.opt,
            &state,
            self.keep_checkpoints,
        )
        .with_context(|| {
            let kept = checkpoint::latest(&self.run.checkpoints())
                .ok()
                .flatten()
                .map_or("none".to_string(), |p| p.display().to_string());
            format!(
                "step {done}: the checkpoint could not be written, so the run stops \
                 (the last complete checkpoint, {kept}, is intact; free space, then --resume)"
            )
        })?;
        debug_phase(done, "saved");
        Ok(saved)
    }

    /// Applies the `RECTHINKER_DEBUG_NONFINITE` fault planned for `step` (1-based), if any,
    /// after the step's backward pass: returns what it adds to the step's loss value (NaN
    /// for a poisoned loss, 0 otherwise). Tests only.
    pub fn inject_debug_fault(&self, step: usize) -> f64 {
        let Some((_, fault)) = self.debug_faults.iter().find(|(s, _)| *s == step) else {
            return 0.0;
        };
        let params = &self.opt.params;
        let Some((_, first)) = params.first() else {
            return 0.0;
        };
        match fault {
            DebugFault::Loss => {
                // A NaN term in the loss: its backward makes every gradient NaN.
                let terms = params.iter().map(|(_, p)| p.sum(Kind::Float));
                if let Some(total) = terms.reduce(|a, b| a + b) {
                    (total * f64::NAN).backward();
                }
                f64::NAN
            }
            DebugFault::Grad => {
                (first.sum(Kind::Float) * f64::INFINITY).backward();
                0.0
            }
        }
    }

    /// Guards the optimizer step of `step` (1-based) whose loss value is `loss`: with a
    /// finite loss and finite gradients, their global norm. Otherwise the weights are left
    /// untouched: under `nonfinite = "stop"` an error naming the step and the tensor (`the
    /// loss`, or the parameter whose gradient is not finite); under `"skip"` the gradients
    /// are dropped, the step is counted in `skipped_nonfinite`, a warning says so, and
    /// `None`.
    pub fn check_finite(
        &mut self,
        policy: NonFinite,
        step: usize,
        loss: f64,
    ) -> Result<Option<f64>> {
        let what = if !loss.is_finite() {
            format!("the loss is {loss}")
        } else {
            match self.opt.grad_norm() {
                Ok(norm) => return Ok(Some(norm)),
                Err(name) => format!("the gradient of `{name}` holds NaN or infinite values"),
            }
        };
        match policy {
            NonFinite::Stop => bail!(
                "step {step}: {what}; stopped before the optimizer step, so no weights \
                 changed (set `[optim] nonfinite = \"skip\"` to skip such steps)"
            ),
            NonFinite::Skip => {
                self.opt.zero_grad();
                self.skipped_nonfinite += 1;
                eprintln!(
                    "warning: step {step}: {what}; step skipped, weights unchanged \
                     ({} skipped so far)",
                    self.skipped_nonfinite
                );
                Ok(None)
            }
        }
    }
}

/// A fault `RECTHINKER_DEBUG_NONFINITE` injects (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DebugFault {
    Loss,
    Grad,
}

/// `RECTHINKER_DEBUG_NONFINITE` parsed: `loss@3,grad@5`.
fn debug_faults() -> Result<Vec<(usize, DebugFault)>> {
    const VAR: &str = "RECTHINKER_DEBUG_NONFINITE";
    let Ok(text) = std::env::var(VAR) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let parsed = part.trim().split_once('@').and_then(|(kind, step)| {
                let kind = match kind {
                    "loss" => DebugFault::Loss,
                    "grad" => DebugFault::Grad,
                    _ => return None,
                };
                Some((step.parse::<usize>().ok()?, kind))
            });
            parsed.with_context(|| format!("{VAR}: `{part}`: expected loss@STEP or grad@STEP"))
        })
        .collect()
}

/// `RECTHINKER_DEBUG_PHASES=1`: prints `phase: step N NAME` on stderr (tests only).
pub fn debug_phase(step: usize, name: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("RECTHINKER_DEBUG_PHASES").is_some_and(|v| v == "1")) {
        eprintln!("phase: step {step} {name}");
    }
}

/// A file-size limit (`ulimit -f`, RLIMIT_FSIZE) kills a process that writes past it with
/// SIGXFSZ by default; ignored, the write fails with EFBIG instead and the run stops with an
/// error naming the file, as on a full disk.
fn report_file_size_limit_as_error() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// With `resume`, loads the newest checkpoint of the run that verifies (`checkpoint::verify`;
/// damaged ones are skipped, saying which and why on stderr) into `model` and `opt`, and
/// returns its step and its count of skipped non-finite steps; otherwise (or without a
/// checkpoint) (0, 0). Checkpoints exist but none verifies: an error.
fn resume_or_start(
    run: &RunDir,
    model: &Model,
    opt: &mut AdamW,
    resume: bool,
) -> Result<(usize, usize)> {
    if !resume {
        return Ok((0, 0));
    }
    let dir = run.checkpoints();
    let candidates = checkpoint::resume_candidates(&dir)?;
    if candidates.is_empty() {
        eprintln!("no checkpoint in {}; starting fresh", dir.display());
        return Ok((0, 0));
    }
    let mut skipped = 0;
    for ck in &candidates {
        // Verified, then loaded: a file that fails either (a checkpoint without a manifest
        // can only fail the second) sends the resume to the next older checkpoint, which
        // overwrites every tensor the failed one may have loaded.
        let loaded = (|| -> Result<(usize, usize)> {
            checkpoint::verify_or_warn(ck)?;
            let state = checkpoint::read_state(ck)?;
            let step = state["step"]
                .as_u64()
                .with_context(|| format!("{}: state.json has no step", ck.display()))?;
            checkpoint::load_weights(model, ck)?;
            checkpoint::load_optimizer(opt, ck)?;
            let nonfinite = state["skipped_nonfinite"].as_u64().unwrap_or(0);
            Ok((step as usize, nonfinite as usize))
        })();
        let (step, nonfinite) = match loaded {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipping checkpoint {}: {e:#}", ck.display());
                skipped += 1;
                continue;
            }
        };
        if skipped > 0 {
            eprintln!(
                "resuming from {}, the newest checkpoint that verifies ({skipped} newer one{} skipped)",
                ck.display(),
                if skipped == 1 { "" } else { "s" }
            );
        }
        eprintln!("resumed from {} at step {step}", ck.display());
        return Ok((step, nonfinite));
    }
    bail!(
        "{}: none of its {} checkpoints verifies and loads (reasons above); move them away \
         to start fresh",
        dir.display(),
        candidates.len()
    )
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

/// (real, computed) token positions of rows of these lengths right-padded to the longest:
/// what a step logs as `pad_fraction` = 1 - real / computed.
pub fn positions(lens: impl Iterator<Item = usize>) -> (usize, usize) {
    let (mut n, mut sum, mut max) = (0, 0, 0);
    for l in lens {
        n += 1;
        sum += l;
        max = max.max(l);
    }
    (sum, n * max)
}

/// 1 - real / computed over micro-batches' `positions` (0 when nothing was computed).
pub fn pad_fraction(parts: impl Iterator<Item = (usize, usize)>) -> f64 {
    let (real, computed) = parts.fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if computed == 0 {
        0.0
    } else {
        1.0 - real as f64 / computed as f64
    }
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
