//! The training objectives on token log-probabilities: masked SFT cross-entropy and the
//! GRPO clipped surrogate with an optional k3 KL to a reference, aggregated as
//! `algos::Aggregation` says.

use crate::algos::Aggregation;
use tch::{Kind, Tensor};

/// SFT: mean negative log-likelihood of the tokens where `mask` [B, T-1] is 1
/// (`mask[:, t]` refers to token t+1, i.e. the mask shifted to the predicted tokens).
pub fn sft_loss(token_lp: &Tensor, mask: &Tensor, normalizer: f64) -> Tensor {
    -(token_lp * mask.to_kind(Kind::Float)).sum(Kind::Float) / normalizer
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

/// The GRPO loss for new/old/ref token log-probs [B, T], advantages [B] and mask [B, T].
pub fn grpo_loss(
    new_lp: &Tensor,
    old_lp: &Tensor,
    ref_lp: Option<&Tensor>,
    adv: &Tensor,
    mask: &Tensor,
    cfg: &GrpoLossConfig,
    is_weights: Option<&Tensor>,
) -> GrpoTerms {
    let a = adv.unsqueeze(-1);
    let ratio = (new_lp - old_lp).exp();
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * &a;
    let surrogate = unclipped.minimum(&clipped);
    // Truncated importance sampling of the rollout precision (`algos::RolloutCorrection`).
    let surrogate = match is_weights {
        Some(w) => surrogate * w,
        None => surrogate,
    };
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
        loss: cfg.aggregation.reduce(&per_token, mask, cfg.dr_grpo_length),
        kl,
        clip_fraction,
    }
}
