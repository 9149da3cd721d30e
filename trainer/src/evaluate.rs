//! The one evaluation path: run the agent on episodes (`rollout::run_batches`), score every
//! row, and accumulate NDCG, validity, tool use and throughput. `recthinker eval`, SFT and
//! GRPO validation use it; the `model` teacher shares its rollout half.

use crate::trajectory::{score, Scored};
use anyhow::Result;
use datasets::{Episode, Split, Subset};
use lm::Policy;
use reward::{NdcgSummary, RewardConfig};
use rollout::{run_batches, AgentEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;
use tools::World;

/// How episodes are run and scored.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Samples per episode (they differ only with temperature > 0).
    pub samples: usize,
    /// Rows (episodes x samples) generated together.
    pub batch_rows: usize,
    pub seed: u64,
    pub reward: RewardConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            samples: 1,
            batch_rows: 16,
            seed: 0,
            reward: RewardConfig::default(),
        }
    }
}

/// What an evaluation measured. Invalid episodes count as rank infinity (0 on every NDCG).
#[derive(Debug, Default, Clone)]
pub struct EvalStats {
    pub ranks: Vec<usize>,
    pub valid: usize,
    pub tool_calls: usize,
    pub bad_calls: usize,
    pub generated_tokens: usize,
    pub per_tool: BTreeMap<String, usize>,
    pub invalid_reasons: BTreeMap<String, usize>,
    pub generation_seconds: f64,
}

impl EvalStats {
    pub fn add(&mut self, s: &Scored) {
        self.ranks.push(s.rank.unwrap_or(usize::MAX));
        self.valid += s.valid as usize;
        self.tool_calls += s.row.calls.len();
        self.bad_calls += s.row.bad_calls();
        self.generated_tokens += s.row.generated_tokens;
        for c in &s.row.calls {
            *self
                .per_tool
                .entry(c.name.clone().unwrap_or_else(|| "(malformed)".into()))
                .or_default() += 1;
        }
        if let Some(r) = &s.invalid_reason {
            *self.invalid_reasons.entry(r.clone()).or_default() += 1;
        }
    }

    pub fn episodes(&self) -> usize {
        self.ranks.len()
    }

    pub fn ndcg(&self) -> NdcgSummary {
        NdcgSummary::from_ranks(&self.ranks)
    }

    pub fn valid_rate(&self) -> f64 {
        self.valid as f64 / self.episodes().max(1) as f64
    }

    pub fn mean_tool_calls(&self) -> f64 {
        self.tool_calls as f64 / self.episodes().max(1) as f64
    }

    /// The report's measured fields (`recthinker eval` adds what was evaluated).
    pub fn report(&self) -> Value {
        let s = self.ndcg();
        let secs = self.generation_seconds.max(1e-9);
        json!({
            "ndcg@1": s.ndcg1, "ndcg@5": s.ndcg5, "ndcg@10": s.ndcg10,
            "valid_rate": self.valid_rate(),
            "mean_tool_calls": self.mean_tool_calls(),
            "tool_calls": self.per_tool,
            "bad_calls": self.bad_calls,
            "episodes": self.episodes(),
            "tokens_generated": self.generated_tokens,
            "generation_seconds": self.generation_seconds,
            "episodes_per_second": self.episodes() as f64 / secs,
            "generated_tokens_per_second": self.generated_tokens as f64 / secs,
            "invalid_reasons": self.invalid_reasons,
        })
    }
}

/// Runs and scores `episodes`; `each` sees every scored row with its episode (trajectory
/// files, progress) as its batch finishes.
pub fn evaluate(
    policy: &Policy,
    env: &AgentEnv,
    episodes: &[&Episode],
    opts: &EvalOptions,
    mut each: impl FnMut(&Scored, &Episode) -> Result<()>,
) -> Result<EvalStats> {
    let mut stats = EvalStats::default();
    let start = Instant::now();
    run_batches(
        policy,
        env,
        episodes,
        opts.samples,
        opts.batch_rows,
        opts.seed,
        |chunk, rows| {
            for row in &rows {
                let ep = chunk[row.episode];
                let s = score(row, ep, &opts.reward);
                stats.add(&s);
                each(&s, ep)?;
            }
            Ok(())
        },
    )?;
    stats.generation_seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// The first `users` validation episodes (one per user, in store order): what SFT and GRPO
/// validate on during training.
pub fn validation_episodes(world: &World, users: usize) -> Vec<&Episode> {
    world
        .data
        .select(Split::Valid, Subset::All)
        .into_iter()
        .take(users)
        .collect()
}

/// Validation during training: the agent (settings `agent`, greedy by default) on the first
/// `users` validation episodes, all in one batch.
pub fn validate(
    policy: &Policy,
    world: &World,
    users: usize,
    agent: &rollout::AgentConfig,
) -> Result<EvalStats> {
    let registry = tools::suite::standard(agent.tool_max_chars);
    let env = AgentEnv::for_policy(policy, world, &registry, agent);
    let eps = validation_episodes(world, users);
    let opts = EvalOptions {
        batch_rows: eps.len().max(1),
        ..Default::default()
    };
    evaluate(policy, &env, &eps, &opts, |_, _| Ok(()))
}
