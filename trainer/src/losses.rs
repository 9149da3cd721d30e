//! The training objectives on token log-probabilities: masked SFT cross-entropy and the
//! GRPO clipped surrogate with an optional k3 KL to a reference, in three aggregations.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// SFT: mean negative log-likelihood of the tokens where `mask` [B, T-1] is 1
/// (`mask[:, t]` refers to token t+1, i.e. the mask shifted to the predicted tokens).
pub fn sft_loss(token_lp: &Tensor, mask: &Tensor, normalizer: f64) -> Tensor {
    -(token_lp * mask.to_kind(Kind::Float)).sum(Kind::Float) / normalizer
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Sum over all tokens of the batch / number of tokens (DAPO-style).
    TokenMean,
    /// Mean over sequences of each sequence's token mean (original GRPO).
    SequenceMean,
    /// Sum over all tokens / (sequences x a constant length) (Dr. GRPO).
    DrGrpo,
}

impl Aggregation {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "token_mean" => Self::TokenMean,
            "sequence_mean" => Self::SequenceMean,
            "dr_grpo" => Self::DrGrpo,
            o => bail!("loss aggregation `{o}`: expected token_mean, sequence_mean or dr_grpo"),
        })
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoLossConfig {
    pub eps_low: f64,
    pub eps_high: f64,
    /// Weight of the k3 KL to the reference policy (0: no reference).
    pub beta: f64,
    pub aggregation: Aggregation,
    /// The constant length of the Dr. GRPO normalizer.
    pub dr_grpo_length: f64,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            eps_low: 0.2,
            eps_high: 0.28,
            beta: 0.0,
            aggregation: Aggregation::TokenMean,
            dr_grpo_length: 1024.0,
        }
    }
}

pub struct GrpoTerms {
    pub loss: Tensor,
    pub kl: f64,
    pub clip_fraction: f64,
}

/// Aggregates per-token values [B, T] under `mask` as `agg` says.
fn aggregate(x: &Tensor, mask: &Tensor, agg: Aggregation, dr_len: f64) -> Tensor {
    let m = mask.to_kind(Kind::Float);
    let b = x.size()[0] as f64;
    match agg {
        Aggregation::TokenMean => (x * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0),
        Aggregation::SequenceMean => ((x * &m).sum_dim_intlist(-1, false, Kind::Float)
            / m.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0))
        .mean(Kind::Float),
        Aggregation::DrGrpo => (x * &m).sum(Kind::Float) / (b * dr_len),
    }
}

/// The GRPO loss for new/old/ref token log-probs [B, T], advantages [B] and mask [B, T].
pub fn grpo_loss(
    new_lp: &Tensor,
    old_lp: &Tensor,
    ref_lp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    cfg: &GrpoLossConfig,
) -> GrpoTerms {
    let a = adv.unsqueeze(-1);
    let ratio = (new_lp - old_lp).exp();
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * &a;
    let surrogate = unclipped.minimum(&clipped);
    let m = mask.to_kind(Kind::Float);
    let n = m.sum(Kind::Float).clamp_min(1.0);
    let (per_token, kl) = match (ref_lp, cfg.beta > 0.0) {
        (Some(r), true) => {
            let d = r - new_lp;
            let k3 = d.exp() - &d - 1.0;
            let kl = tch::no_grad(|| ((&k3 * &m).sum(Kind::Float) / &n).double_value(&[]));
            (-surrogate + k3 * cfg.beta, kl)
        }
        _ => (-surrogate, 0.0),
    };
    let clip_fraction = tch::no_grad(|| {
        let lo = ratio.lt(1.0 - cfg.eps_low).logical_and(&a.lt(0.0));
        let hi = ratio.gt(1.0 + cfg.eps_high).logical_and(&a.gt(0.0));
        ((lo.logical_or(&hi).to_kind(Kind::Float) * &m).sum(Kind::Float) / &n).double_value(&[])
    });
    GrpoTerms {
        loss: aggregate(&per_token, mask, cfg.aggregation, cfg.dr_grpo_length),
        kl,
        clip_fraction,
    }
}

/// Group-relative advantages for rewards laid out as groups of `g` consecutive samples.
/// Returns None for a group whose rewards are all equal (no signal: it is dropped).
pub fn group_advantages(rewards: &[f64], g: usize, z_score: bool) -> Vec<Option<f64>> {
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
                        None
                    } else if z_score {
                        Some((r - mean) / (std + 1e-6))
                    } else {
                        Some(r - mean)
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
