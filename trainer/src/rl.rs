//! GRPO: each step rolls out B episodes x G samples with the current policy, scores them,
//! computes group-relative advantages (dropping groups with no reward variance), and
//! optimizes the clipped surrogate (with an optional k3 KL to a frozen reference) over
//! `inner_epochs` passes in micro-batches.

use crate::algos::AdvantageEstimator;
use crate::data_parallel::DataParallel;
use crate::evaluate::validate;
use crate::losses::GrpoLossConfig;
use crate::optim::{lr_at, NonFinite, OptimConfig};
use crate::rl_batch::{accumulate_gradients_of, batch_totals, micro_batches, BatchTotals, Fixed};
use crate::train_common::{batch_indices, debug_phase, RunSpec};
use crate::trajectory::score;
use anyhow::{bail, Context, Result};
use datasets::{Episode, Split};
use lm::lora::LoraConfig;
use lm::Policy;
use reward::RewardConfig;
use rollout::{run_batches, AgentConfig, AgentEnv};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    pub run_dir: PathBuf,
    /// The policy to start from (HF directory, e.g. an exported SFT model).
    pub model: PathBuf,
    /// Prepared HDF5 file; training episodes come from its train split.
    pub data: PathBuf,
    #[serde(default = "crate::config::defaults::cpu")]
    pub device: String,
    #[serde(default = "crate::config::defaults::f32")]
    pub dtype: String,
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    /// B: episodes per step.
    #[serde(default = "crate::config::defaults::four")]
    pub episodes_per_step: usize,
    /// G: samples per episode (the group).
    #[serde(default = "crate::config::defaults::four")]
    pub group_size: usize,
    /// Inner epochs over each batch of rollouts (optimizer steps per GRPO step).
    #[serde(default = "crate::config::defaults::one")]
    pub inner_epochs: usize,
    /// The old name of `inner_epochs`: present only to reject it with a message naming the
    /// new key (`[reward] mu`, the bad-call penalty, keeps its name).
    #[serde(default, skip_serializing, deserialize_with = "renamed_mu")]
    #[allow(dead_code)] // never read: deserializing it always fails
    mu: Option<()>,
    /// Rows per forward/backward when `share_prompt` is off.
    #[serde(default = "crate::config::defaults::two")]
    pub micro_batch: usize,
    /// Train each group as one micro-batch whose shared prompt runs once (same loss and
    /// gradients as full rows, less compute); off: `micro_batch` full rows at a time.
    #[serde(default = "crate::config::defaults::yes")]
    pub share_prompt: bool,
    /// z_score, or mean_only (Dr. GRPO).
    #[serde(default)]
    pub advantage: AdvantageEstimator,
    /// Train on groups whose rewards are all equal too (advantage 0: only the KL term acts).
    /// Off by default, as GRPO drops them; benchmarks against TRL turn it on.
    #[serde(default)]
    pub keep_zero_variance_groups: bool,
    /// Write every rollout (conversation, tool calls, answer, reward, advantage) to
    /// `run_dir/rollouts/step-NNNNNN.jsonl` (one file per rank when data parallel), in the
    /// format of `eval --trajectories`: what the policy sampled, step by step.
    #[serde(default)]
    pub save_rollouts: bool,
    /// Validation: every N steps (0: never) and after the last, run the agent with
    /// `eval_agent` (greedy by default) on the first `eval_users` validation episodes of
    /// `data`; logs `val_ndcg@10`, `val_valid_rate` and `val_tool_calls`.
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default = "crate::config::defaults::sixteen")]
    pub eval_users: usize,
    #[serde(default = "eval_agent")]
    pub eval_agent: AgentConfig,
    #[serde(default = "crate::config::defaults::ten")]
    pub save_every: usize,
    #[serde(default = "crate::config::defaults::three")]
    pub keep_checkpoints: usize,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub loss: GrpoLossConfig,
    #[serde(default = "rl_agent")]
    pub agent: AgentConfig,
    #[serde(default)]
    pub reward: RewardConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Where metrics go: `jsonl` (metrics.jsonl, which the PNG plots are drawn from) and
    /// `tensorboard` (event files under `run_dir/tb/`).
    #[serde(default = "crate::run_dir::all_reporters")]
    pub report_to: Vec<crate::run_dir::Reporter>,
    /// Linear layers of the training forward in `bf16` (f32 master weights, LoRA and
    /// optimizer state; `lm::autocast`), or `off`.
    #[serde(default = "crate::config::defaults::off")]
    pub autocast: String,
    /// The same for the rollouts' generation (validation stays in the model's dtype).
    #[serde(default = "crate::config::defaults::off")]
    pub rollout_autocast: String,
    /// Truncated importance sampling when the two differ (`algos::RolloutCorrection`).
    #[serde(default)]
    pub rollout_correction: crate::algos::RolloutCorrection,
}

/// The rollout settings, greedy.
fn eval_agent() -> AgentConfig {
    AgentConfig {
        temperature: 0.0,
        ..rl_agent()
    }
}

fn rl_agent() -> AgentConfig {
    AgentConfig {
        temperature: 1.0,
        ..Default::default()
    }
}

fn renamed_mu<'de, D: serde::Deserializer<'de>>(_: D) -> Result<Option<()>, D::Error> {
    Err(serde::de::Error::custom(
        "`mu` was renamed to `inner_epochs` (inner epochs per GRPO step); \
         `[reward] mu`, the bad-call penalty, keeps its name",
    ))
}

impl RlConfig {
    fn run_spec(&self) -> RunSpec<'_> {
        RunSpec {
            kind: "grpo",
            run_dir: &self.run_dir,
            model: &self.model,
            device: &self.device,
            dtype: &self.dtype,
            seed: self.seed,
            lora: self.lora.as_ref(),
            steps: self.steps,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            report_to: &self.report_to,
        }
    }
}

/// The metrics a progress line shows.
const GRPO_SHOWN: [&str; 6] = [
    "reward_mean",
    "ndcg@10",
    "valid_rate",
    "tool_calls",
    "loss",
    "val_ndcg@10",
];

/// The training episodes of step `step` (seeded epochs over the train split).
fn step_episodes(all: &[Episode], seed: u64, step: usize, b: usize) -> Vec<&Episode> {
    batch_indices(all.len(), seed ^ 0x9E37, step, b)
        .into_iter()
        .map(|i| &all[i])
        .collect()
}

pub fn run(cfg: &RlConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    if cfg.group_size < 2 {
        bail!("group_size must be at least 2 (advantages are relative within a group)");
    }
    // Seeded before the world loads, as SASRec's load draws from libtorch's RNG before the
    // LoRA adapters initialize from it.
    tch::manual_seed(cfg.seed as i64);
    let world = tools::world::load(&cfg.data)?;
    let registry = tools::suite::standard(cfg.agent.tool_max_chars);
    // Data parallel when launched as several processes (torchrun, srun): each rank rolls out
    // its groups.
    let (dp, mut tr) = DataParallel::start_run(&cfg.run_spec(), cfg, resume)?;
    let reference = if cfg.loss.beta > 0.0 {
        Some(Policy::load(&cfg.model, tr.device, tr.kind)?)
    } else {
        None
    };
    let train = world.data.episodes(Split::Train);
    if train.is_empty() {
        bail!("{}: no training episodes", cfg.data.display());
    }
    let total_opt_steps = cfg.steps * cfg.inner_epochs;
    let train_kind = lm::autocast::parse(&cfg.autocast).context("config key `autocast`")?;
    let rollout_kind =
        lm::autocast::parse(&cfg.rollout_autocast).context("config key `rollout_autocast`")?;
    let correct = cfg.rollout_correction.active(train_kind != rollout_kind);
    if correct && (cfg.agent.temperature - 1.0).abs() > 1e-9 {
        bail!(
            "`rollout_correction` compares the rollout's log-probs with the training forward's, \
             which are at temperature 1: set `[agent] temperature = 1.0` or \
             `[rollout_correction] mode = \"off\"`"
        );
    }
    let bar = if dp.is_main() {
        lm::progress::Progress::new("grpo", "steps", cfg.steps, tr.start).every(1)
    } else {
        lm::progress::Progress::hidden()
    };
    let end = stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in tr.start..end {
        // 1. Rollouts with the current policy.
        debug_phase(step + 1, "rollout");
        let t_roll = Instant::now();
        let all_eps = step_episodes(train, cfg.seed, step, cfg.episodes_per_step);
        // This rank's groups (all of them in one process), each row seeded as in one process.
        let mine = dp.shard(all_eps.len());
        let eps = &all_eps[mine.clone()];
        let rows = {
            let env = AgentEnv::for_policy(&tr.policy, &world, &registry, &cfg.agent);
            let seed = cfg
                .seed
                .wrapping_mul(7919)
                .wrapping_add((step * 1_000_003) as u64)
                .wrapping_add((mine.start * cfg.group_size) as u64);
            let mut rows = Vec::new();
            // All B x G rows as one batch: GRPO's groups share their prompts in the engine.
            let all = eps.len() * cfg.group_size;
            lm::autocast::with(rollout_kind, || {
                run_batches(&tr.policy, &env, eps, cfg.group_size, all, seed, |_, r| {
                    rows = r;
                    Ok(())
                })
            })?;
            rows
        };
        let rollout_seconds = t_roll.elapsed().as_secs_f64();
        // 2. Rewards and group advantages.
        let scored: Vec<_> = rows
            .iter()
            .map(|r| score(r, eps[r.episode], &cfg.reward))
            .collect();
        let rewards: Vec<f64> = scored.iter().map(|s| s.reward.total).collect();
        let adv =
            cfg.advantage
                .group_advantages(&rewards, cfg.group_size, cfg.keep_zero_variance_groups);
        if cfg.save_rollouts {
            crate::rl_log::save_rollouts(
                &tr.run.root,
                step + 1,
                dp.is_distributed().then(|| dp.rank()),
                &scored,
                &adv,
                eps,
                &world.data,
            )?;
        }
        // The metrics are over every rank's rows, in the order of one process.
        let per_row: Vec<f64> = scored
            .iter()
            .zip(&rows)
            .flat_map(|(s, r)| {
                [
                    s.reward.total,
                    s.reward.acc,
                    s.reward.fmt,
                    s.reward.eff,
                    s.reward.bad_penalty,
                    s.valid as u8 as f64,
                    s.row.calls.len() as f64,
                    r.generated_tokens as f64,
                ]
            })
            .collect();
        let all_rows = dp.gather(&per_row)?;
        let all_rows: Vec<&[f64]> = all_rows.chunks(8).collect();
        let n = all_rows.len() as f64;
        let col_sum = |i: usize| all_rows.iter().map(|r| r[i]).sum::<f64>();
        let mean = |i: usize| col_sum(i) / n;
        let reward_mean = mean(0);
        let reward_std = (all_rows
            .iter()
            .map(|r| (r[0] - reward_mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let mut line = serde_json::json!({
            "step": step + 1,
            "reward_mean": reward_mean, "reward_std": reward_std,
            "reward_acc": mean(1), "reward_fmt": mean(2),
            "reward_eff": mean(3), "reward_bad_penalty": mean(4),
            "ndcg@10": mean(1), "valid_rate": mean(5),
            "tool_calls": mean(6),
            "generated_tokens": col_sum(7) as usize,
            "rollout_seconds": rollout_seconds,
        });
        // 3. The batch: rows of groups with signal, as micro-batches.
        let micro = micro_batches(
            &rows,
            &adv,
            cfg.share_prompt,
            cfg.micro_batch,
            correct,
            tr.device,
        );
        // Groups with signal (zero-variance ones have no advantage), the rows trained on and
        // their scored tokens, over every rank.
        let groups_kept = adv
            .chunks(cfg.group_size.max(1))
            .filter(|g| g.iter().any(Option::is_some))
            .count();
        let local = batch_totals(&micro);
        let mut counts = [groups_kept as f64, local.rows as f64, local.tokens];
        dp.sum(&mut counts)?;
        let totals = BatchTotals {
            tokens: counts[2],
            rows: counts[1] as usize,
        };
        let batch_rows = totals.rows;
        line["groups_kept"] = serde_json::json!(counts[0] as usize);
        line["rows_trained"] = serde_json::json!(batch_rows);
        line["pad_fraction"] = serde_json::json!(crate::train_common::pad_fraction(
            micro.iter().map(|mb| mb.positions)
        ));
        debug_phase(step + 1, "train");
        let t_train = Instant::now();
        let (mut kl, mut clip, mut entropy, mut loss_sum, mut lr) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut is_weight, mut is_truncated) = (0.0, 0.0);
        if batch_rows > 0 {
            // Old (and reference) log-probs, fixed for the inner epochs. With one inner epoch
            // the old policy is the current one: its log-probs are the detached new ones, so
            // that extra forward is skipped.
            let fixed: Vec<Fixed> = micro
                .iter()
                .map(|mb| Fixed {
                    old: (cfg.inner_epochs > 1).then(|| {
                        lm::autocast::with(train_kind, || {
                            tch::no_grad(|| mb.logprobs(&tr.policy.model).dense)
                        })
                    }),
                    reference: reference
                        .as_ref()
                        .map(|r| tch::no_grad(|| mb.logprobs(&r.model).dense)),
                })
                .collect();
            for inner in 0..cfg.inner_epochs {
                let mut stats = lm::autocast::with(train_kind, || {
                    accumulate_gradients_of(
                        &tr.policy.model,
                        &micro,
                        &fixed,
                        &cfg.loss,
                        &cfg.rollout_correction,
                        totals,
                    )
                });
                // Every rank now holds the whole batch's gradient and statistics.
                let mut sums = [
                    stats.loss,
                    stats.kl,
                    stats.clip_fraction,
                    stats.entropy,
                    stats.is_weight,
                    stats.is_truncated,
                ];
                dp.all_reduce_grads(&tr.opt, &mut sums)?;
                [
                    stats.loss,
                    stats.kl,
                    stats.clip_fraction,
                    stats.entropy,
                    stats.is_weight,
                    stats.is_truncated,
                ] = sums;
                if inner == 0 {
                    (is_weight, is_truncated) = (stats.is_weight, stats.is_truncated);
                    stats.loss += tr.inject_debug_fault(step + 1);
                }
                loss_sum += stats.loss;
                kl += stats.kl;
                clip += stats.clip_fraction;
                entropy += stats.entropy;
                lr = lr_at(&cfg.optim, step * cfg.inner_epochs + inner, total_opt_steps);
                // A NaN/inf loss or gradient never reaches the weights: the run stops, or
                // (`nonfinite = "skip"`) this and the step's remaining inner epochs are
                // skipped.
                let Some(norm) = tr.check_finite(cfg.optim.nonfinite, step + 1, stats.loss)? else {
                    break;
                };
                tr.opt.scale_grads(norm, cfg.optim.max_grad_norm);
                tr.opt.apply(&cfg.optim, lr);
                tr.opt.zero_grad();
            }
            let m = cfg.inner_epochs as f64;
            (kl, clip, entropy, loss_sum) = (kl / m, clip / m, entropy / m, loss_sum / m);
        }
        line["loss"] = serde_json::json!(loss_sum);
        line["kl"] = serde_json::json!(kl);
        line["clip_fraction"] = serde_json::json!(clip);
        line["entropy"] = serde_json::json!(entropy);
        line["lr"] = serde_json::json!(lr);
        if correct {
            line["is_weight"] = serde_json::json!(is_weight);
            line["is_truncated"] = serde_json::json!(is_truncated);
        }
        if cfg.optim.nonfinite == NonFinite::Skip {
            line["skipped_nonfinite"] = serde_json::json!(tr.skipped_nonfinite);
        }
        line["train_seconds"] = serde_json::json!(t_train.elapsed().as_secs_f64());
        if dp.is_distributed() {
            line["allreduce_seconds"] = serde_json::json!(dp.take_reduce_seconds());
        }
        // Rank 0 validates.
        if dp.is_main()
            && cfg.eval_every > 0
            && ((step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps)
        {
            let t_val = Instant::now();
            let v = validate(&tr.policy, &world, cfg.eval_users, &cfg.eval_agent)?;
            line["val_ndcg@10"] = serde_json::json!(v.ndcg().ndcg10);
            line["val_valid_rate"] = serde_json::json!(v.valid_rate());
            line["val_tool_calls"] = serde_json::json!(v.mean_tool_calls());
            line["val_seconds"] = serde_json::json!(t_val.elapsed().as_secs_f64());
        }
        dp.end_step(&mut tr, step + 1, &line)?;
        bar.set_message(crate::run_dir::summary(&line, &GRPO_SHOWN));
        bar.inc(1);
    }
    bar.finish();
    dp.cleanup(&cfg.run_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> std::result::Result<RlConfig, String> {
        let text = format!("run_dir = \"r\"\nmodel = \"m\"\ndata = \"d\"\nsteps = 1\n{extra}");
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn old_mu_key_names_its_new_name() {
        let err = parse("mu = 2\n").unwrap_err();
        assert!(err.contains("`mu` was renamed to `inner_epochs`"), "{err}");
        assert_eq!(parse("inner_epochs = 2\n").unwrap().inner_epochs, 2);
        // The reward's bad-call penalty keeps its name.
        assert_eq!(parse("[reward]\nmu = 0.1\n").unwrap().reward.mu, 0.1);
    }

    #[test]
    fn algorithm_choices_name_key_and_allowed_values() {
        let cfg = parse("advantage = \"mean_only\"\n[loss]\naggregation = \"dr_grpo\"\n").unwrap();
        assert_eq!(cfg.advantage, AdvantageEstimator::MeanOnly);
        assert_eq!(cfg.loss.aggregation, crate::algos::Aggregation::DrGrpo);
        let err = parse("advantage = \"zscore\"\n").unwrap_err();
        for want in ["advantage", "zscore", "z_score", "mean_only"] {
            assert!(err.contains(want), "{want} not in {err}");
        }
        let err = parse("[loss]\naggregation = \"mean\"\n").unwrap_err();
        for want in ["aggregation", "token_mean", "sequence_mean", "dr_grpo"] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }
}
