//! Log-probabilities of the tokens a loss is taken on, computing the LM head only at those
//! positions (the head over a 49k vocabulary is a fifth of a small model's FLOPs per token,
//! and most positions of an agent conversation are prompt or tool output).

use rollout::model::AttnContext;
use rollout::Model;
use tch::{Kind, Tensor};

pub struct TokenLogprobs {
    /// [B, T-1]: log p(ids[t+1] | ids[..=t]) where `mask[t+1]` is 1, else 0.
    pub dense: Tensor,
    /// Mean entropy (nats) of the model's distribution at those positions.
    pub entropy: f64,
}

/// `ids`, `mask`: [B, T] (mask 1 on tokens to score).
pub fn token_logprobs(model: &Model, ids: &Tensor, mask: &Tensor) -> TokenLogprobs {
    let (b, t) = ids.size2().expect("ids is [batch, seq]");
    let hidden = model.forward_hidden(ids, AttnContext::Causal);
    let h = hidden.size()[2];
    let target_mask = mask.narrow(1, 1, t - 1).reshape([-1]).to_kind(Kind::Bool);
    let flat = Tensor::arange(b * (t - 1), (Kind::Int64, ids.device())).masked_select(&target_mask);
    // Flat index over [B, T-1] -> position in the [B, T] hidden states (same row, same t).
    let row = flat.divide_scalar_mode(t - 1, "floor");
    let src = &row * t + (&flat - &row * (t - 1));
    let picked = hidden.view([-1, h]).index_select(0, &src);
    let lp_all = model.logits(&picked).log_softmax(-1, Kind::Float);
    let targets = ids.reshape([-1]).index_select(0, &(&src + 1));
    let lp = lp_all
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1);
    let entropy = tch::no_grad(|| {
        let n = lp_all.size()[0].max(1) as f64;
        (-(lp_all.exp() * &lp_all).sum(Kind::Float)).double_value(&[]) / n
    });
    let dense = Tensor::zeros([b * (t - 1)], (Kind::Float, ids.device()))
        .index_put(&[Some(flat)], &lp, false)
        .view([b, t - 1]);
    TokenLogprobs { dense, entropy }
}
