//! GRPO's algorithm choices, one typed place each (after verl's `core_algos.py`): how a
//! group's rewards become advantages, and how per-token losses aggregate over a batch. Each
//! is a config value (snake_case) that owns its rules; a bad value is a config error naming
//! the key and the allowed values.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `advantage`: how a group's rewards become advantages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// (r - group mean) / (group std + 1e-6), the std with Bessel's correction (GRPO).
    #[default]
    ZScore,
    /// r - group mean (Dr. GRPO).
    MeanOnly,
}

impl AdvantageEstimator {
    /// Advantages for rewards laid out as groups of `g` consecutive samples. A group whose
    /// rewards are all equal carries no signal: its rows get None (not trained), or
    /// advantage 0 with `keep_zero_variance_groups` (only the KL term acts on them).
    pub fn group_advantages(
        self,
        rewards: &[f64],
        g: usize,
        keep_zero_variance_groups: bool,
    ) -> Vec<Option<f64>> {
        rewards
            .chunks(g)
            .flat_map(|grp| {
                let n = grp.len() as f64;
                let mean = grp.iter().sum::<f64>() / n;
                let var = grp.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
                let std = var.sqrt();
                grp.iter()
                    .map(move |r| {
                        if std < 1e-9 {
                            keep_zero_variance_groups.then_some(0.0)
                        } else {
                            Some(match self {
                                Self::ZScore => (r - mean) / (std + 1e-6),
                                Self::MeanOnly => r - mean,
                            })
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// `[loss] aggregation`: how per-token losses reduce to the batch loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Sum over all tokens of the batch / number of tokens (DAPO-style).
    #[default]
    TokenMean,
    /// Mean over sequences of each sequence's token mean (original GRPO).
    SequenceMean,
    /// Sum over all tokens / (sequences x a constant length) (Dr. GRPO).
    DrGrpo,
}

impl Aggregation {
    /// Reduces per-token values [B, T] under `mask` [B, T]; `dr_len` is Dr. GRPO's constant
    /// length.
    pub fn reduce(self, x: &Tensor, mask: &Tensor, dr_len: f64) -> Tensor {
        let m = mask.to_kind(Kind::Float);
        let b = x.size()[0] as f64;
        match self {
            Self::TokenMean => (x * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0),
            Self::SequenceMean => ((x * &m).sum_dim_intlist(-1, false, Kind::Float)
                / m.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0))
            .mean(Kind::Float),
            Self::DrGrpo => (x * &m).sum(Kind::Float) / (b * dr_len),
        }
    }

    /// The weight of a micro-batch's loss (reduced over that micro-batch alone) such that the
    /// weighted sum over the micro-batches equals the reduction over the whole batch: its
    /// share of the batch's scored tokens for token_mean, of its rows otherwise.
    pub fn micro_batch_weight(
        self,
        tokens: f64,
        rows: usize,
        total_tokens: f64,
        total_rows: usize,
    ) -> f64 {
        match self {
            Self::TokenMean => tokens / total_tokens.max(1.0),
            Self::SequenceMean | Self::DrGrpo => rows as f64 / total_rows.max(1) as f64,
        }
    }
}

/// `[rollout_correction]`: truncated importance sampling (TIS) for rollouts sampled at
/// another precision than the training forward computes (`rollout_autocast` vs `autocast`),
/// as verl's rollout correction and TRL's `vllm_importance_sampling_correction` do: each
/// scored token's policy-gradient term is weighted by min(pi_train_old / pi_rollout,
/// `threshold`), detached, where pi_train_old is the training forward's probability before
/// the update and pi_rollout the one the engine sampled with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutCorrection {
    pub mode: CorrectionMode,
    /// C, the truncation of the per-token weight (verl's default 2).
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionMode {
    /// Token-level TIS when the rollout and training precisions differ; off otherwise.
    #[default]
    Auto,
    /// Token-level TIS always (with equal precisions the weights are ~1).
    TokenTis,
    Off,
}

impl Default for RolloutCorrection {
    fn default() -> Self {
        Self {
            mode: CorrectionMode::Auto,
            threshold: 2.0,
        }
    }
}

impl RolloutCorrection {
    /// Whether the weights apply, given whether the two precisions differ.
    pub fn active(&self, precisions_differ: bool) -> bool {
        match self.mode {
            CorrectionMode::Auto => precisions_differ,
            CorrectionMode::TokenTis => true,
            CorrectionMode::Off => false,
        }
    }

    /// Detached per-token weights min(exp(old - rollout), threshold), [rows, T].
    pub fn weights(&self, old_lp: &Tensor, rollout_lp: &Tensor) -> Tensor {
        (old_lp.detach() - rollout_lp)
            .exp()
            .clamp_max(self.threshold)
            .detach()
    }
}
