//! GRPO: each step rolls out B episodes x G samples with the current policy, scores them,
//! computes group-relative advantages (dropping groups with no reward variance), and
//! optimizes the clipped surrogate (with an optional k3 KL to a frozen reference) over `mu`
//! inner epochs in micro-batches.

use crate::checkpoint;
use crate::losses::{group_advantages, GrpoLossConfig};
use crate::optim::{lr_at, AdamW, OptimConfig};
use crate::rl_batch::{accumulate_gradients, micro_batches, Fixed, MicroBatch};
use crate::run_dir::RunDir;
use crate::sft::trainable;
use crate::trajectory::score;
use anyhow::{bail, Result};
use datasets::{Episode, Split};
use lm::device::{parse_device, parse_dtype};
use lm::engine::Engine;
use lm::lora::LoraConfig;
use lm::Policy;
use reward::RewardConfig;
use rollout::{run_agent, AgentConfig};
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
    pub mu: usize,
    /// Rows per forward/backward when `share_prompt` is off.
    #[serde(default = "crate::config::defaults::two")]
    pub micro_batch: usize,
    /// Train each group as one micro-batch whose shared prompt runs once (same loss and
    /// gradients as full rows, less compute); off: `micro_batch` full rows at a time.
    #[serde(default = "yes")]
    pub share_prompt: bool,
    /// z_score, or mean_only (Dr. GRPO).
    #[serde(default = "z_score")]
    pub advantage: String,
    /// Train on groups whose rewards are all equal too (advantage 0: only the KL term acts).
    /// Off by default, as GRPO drops them; benchmarks against TRL turn it on.
    #[serde(default)]
    pub keep_zero_variance_groups: bool,
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
}

fn yes() -> bool {
    true
}
fn z_score() -> String {
    "z_score".into()
}
fn rl_agent() -> AgentConfig {
    AgentConfig {
        temperature: 1.0,
        ..Default::default()
    }
}

/// The training episodes of step `step` (seeded epochs over the train split).
fn step_episodes(all: &[Episode], seed: u64, step: usize, b: usize) -> Vec<&Episode> {
    crate::sft::batch_indices(all.len(), seed ^ 0x9E37, step, b)
        .into_iter()
        .map(|i| &all[i])
        .collect()
}

pub fn run(cfg: &RlConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    let z = match cfg.advantage.as_str() {
        "z_score" => true,
        "mean_only" => false,
        o => bail!("advantage `{o}`: expected z_score or mean_only"),
    };
    if cfg.group_size < 2 {
        bail!("group_size must be at least 2 (advantages are relative within a group)");
    }
    let device = parse_device(&cfg.device)?;
    let kind = parse_dtype(&cfg.dtype)?;
    tch::manual_seed(cfg.seed as i64);
    let world = tools::world::load(&cfg.data)?;
    let registry = tools::suite::standard(cfg.agent.tool_max_chars);
    let mut policy = Policy::load(&cfg.model, device, kind)?;
    if let Some(l) = &cfg.lora {
        policy.model.add_lora(l)?;
    }
    let reference = if cfg.loss.beta > 0.0 {
        Some(Policy::load(&cfg.model, device, kind)?)
    } else {
        None
    };
    let run = RunDir::create(&cfg.run_dir, &serde_json::to_value(cfg)?)?;
    let mut opt = AdamW::new(trainable(&policy.model));
    let start = checkpoint::resume_or_start(&run, &policy.model, &mut opt, resume)?;
    let train = world.data.episodes(Split::Train);
    if train.is_empty() {
        bail!("{}: no training episodes", cfg.data.display());
    }
    let total_opt_steps = cfg.steps * cfg.mu;
    let bar = crate::run_dir::progress_bar("grpo", "steps", cfg.steps, start)?;
    let end = stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in start..end {
        // 1. Rollouts with the current policy.
        let t_roll = Instant::now();
        let eps = step_episodes(train, cfg.seed, step, cfg.episodes_per_step);
        let rows = {
            let mut engine = Engine::new(&policy.model, &policy.tokenizer);
            engine.max_context = cfg.agent.max_context;
            run_agent(
                &mut engine,
                &policy.tokenizer,
                &policy.chat,
                &world,
                &registry,
                &eps,
                cfg.group_size,
                &cfg.agent,
                cfg.seed
                    .wrapping_mul(7919)
                    .wrapping_add((step * 1_000_003) as u64),
            )?
        };
        let rollout_seconds = t_roll.elapsed().as_secs_f64();
        // 2. Rewards and group advantages.
        let scored: Vec<_> = rows
            .iter()
            .map(|r| score(r, eps[r.episode], &cfg.reward))
            .collect();
        let rewards: Vec<f64> = scored.iter().map(|s| s.reward.total).collect();
        let adv: Vec<Option<f64>> = group_advantages(&rewards, cfg.group_size, z)
            .into_iter()
            .map(|a| {
                if cfg.keep_zero_variance_groups {
                    Some(a.unwrap_or(0.0))
                } else {
                    a
                }
            })
            .collect();
        let n = rewards.len() as f64;
        let mean =
            |f: &dyn Fn(&crate::trajectory::Scored) -> f64| scored.iter().map(f).sum::<f64>() / n;
        let reward_mean = rewards.iter().sum::<f64>() / n;
        let reward_std = (rewards
            .iter()
            .map(|r| (r - reward_mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let mut line = serde_json::json!({
            "step": step + 1,
            "reward_mean": reward_mean, "reward_std": reward_std,
            "reward_acc": mean(&|s| s.reward.acc), "reward_fmt": mean(&|s| s.reward.fmt),
            "reward_eff": mean(&|s| s.reward.eff), "reward_bad_penalty": mean(&|s| s.reward.bad_penalty),
            "ndcg@10": mean(&|s| s.reward.acc), "valid_rate": mean(&|s| s.valid as u8 as f64),
            "tool_calls": mean(&|s| s.row.calls.len() as f64),
            "generated_tokens": rows.iter().map(|r| r.generated_tokens).sum::<usize>(),
            "rollout_seconds": rollout_seconds,
        });
        // 3. The batch: rows of groups with signal, as micro-batches.
        let micro = micro_batches(&rows, &adv, cfg.share_prompt, cfg.micro_batch, device);
        let batch_rows: usize = micro.iter().map(MicroBatch::rows).sum();
        // Groups with signal (zero-variance ones have no advantage), and the rows trained on.
        line["groups_kept"] = serde_json::json!(adv
            .chunks(cfg.group_size.max(1))
            .filter(|g| g.iter().any(Option::is_some))
            .count());
        line["rows_trained"] = serde_json::json!(batch_rows);
        let t_train = Instant::now();
        let (mut kl, mut clip, mut entropy, mut loss_sum, mut lr) = (0.0, 0.0, 0.0, 0.0, 0.0);
        if batch_rows > 0 {
            // Old (and reference) log-probs, fixed for the inner epochs. With one inner epoch
            // the old policy is the current one: its log-probs are the detached new ones, so
            // that extra forward is skipped.
            let fixed: Vec<Fixed> = micro
                .iter()
                .map(|mb| Fixed {
                    old: (cfg.mu > 1).then(|| tch::no_grad(|| mb.logprobs(&policy.model).dense)),
                    reference: reference
                        .as_ref()
                        .map(|r| tch::no_grad(|| mb.logprobs(&r.model).dense)),
                })
                .collect();
            for inner in 0..cfg.mu {
                let stats = accumulate_gradients(&policy.model, &micro, &fixed, &cfg.loss);
                loss_sum += stats.loss;
                kl += stats.kl;
                clip += stats.clip_fraction;
                entropy += stats.entropy;
                opt.clip_grad_norm(cfg.optim.max_grad_norm);
                lr = lr_at(&cfg.optim, step * cfg.mu + inner, total_opt_steps);
                opt.apply(&cfg.optim, lr);
                opt.zero_grad();
            }
            let m = cfg.mu as f64;
            (kl, clip, entropy, loss_sum) = (kl / m, clip / m, entropy / m, loss_sum / m);
        }
        line["loss"] = serde_json::json!(loss_sum);
        line["kl"] = serde_json::json!(kl);
        line["clip_fraction"] = serde_json::json!(clip);
        line["entropy"] = serde_json::json!(entropy);
        line["lr"] = serde_json::json!(lr);
        line["train_seconds"] = serde_json::json!(t_train.elapsed().as_secs_f64());
        run.log(&line)?;
        bar.set_message(format!(
            "reward {reward_mean:.3} valid {:.2}",
            line["valid_rate"].as_f64().unwrap_or(0.0)
        ));
        bar.inc(1);
        let done = step + 1;
        if done % cfg.save_every.max(1) == 0 || done == cfg.steps {
            let state = serde_json::json!({"step": done, "kind": "grpo", "base_model": cfg.model, "lora": cfg.lora, "dtype": cfg.dtype, "seed": cfg.seed});
            run.checkpoint(done, &policy.model, &opt, &state, cfg.keep_checkpoints)?;
        }
    }
    bar.finish();
    Ok(())
}
