//! Log-probabilities of the tokens a loss is taken on, computing the LM head only at those
//! positions (the head over a 49k vocabulary is a fifth of a small model's FLOPs per token,
//! and most positions of an agent conversation are prompt or tool output).

use lm::model::AttnContext;
use lm::Model;
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
    let targets = ids.reshape([-1]).index_select(0, &(&src + 1));
    scored(model, &picked, &targets, flat, [b, t - 1])
}

/// Log-probs of `targets` under the head applied to `picked` hidden states, scattered to
/// the flat positions `flat` of a zero [rows, cols] tensor, and their mean entropy.
fn scored(
    model: &Model,
    picked: &Tensor,
    targets: &Tensor,
    flat: Tensor,
    shape: [i64; 2],
) -> TokenLogprobs {
    let lp_all = model.logits(picked).log_softmax(-1, Kind::Float);
    let lp = lp_all
        .gather(1, &targets.unsqueeze(1), false)
        .squeeze_dim(1);
    let entropy = tch::no_grad(|| {
        let n = lp_all.size()[0].max(1) as f64;
        (-(lp_all.exp() * &lp_all).sum(Kind::Float)).double_value(&[]) / n
    });
    let dense = Tensor::zeros([shape[0] * shape[1]], (Kind::Float, picked.device()))
        .index_put(&[Some(flat)], &lp, false)
        .view(shape);
    TokenLogprobs { dense, entropy }
}

/// A prompt's forward, recorded for rows that continue it: every layer's keys and values
/// and the last hidden state (which predicts the first token after the prompt).
pub struct Prefix {
    kv: Vec<(Tensor, Tensor)>,
    /// [1, 1, H]
    last: Tensor,
}

impl Prefix {
    /// Runs `prompt` ([P] ids) forward once, keeping its autograd history.
    pub fn forward(model: &Model, prompt: &Tensor) -> Prefix {
        let mut kv = Vec::new();
        let hidden = model.forward_hidden(&prompt.unsqueeze(0), AttnContext::Record(&mut kv));
        let p = hidden.size()[1];
        Prefix {
            kv,
            last: hidden.narrow(1, p - 1, 1),
        }
    }

    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.kv.iter().flat_map(|(k, v)| [k, v]).chain([&self.last])
    }

    /// The same values cut from autograd, as leaves that collect the gradients of the rows
    /// continued from them; [`Prefix::backward_from`] then carries those gradients through
    /// the prompt's forward once. Rows can so run forward and backward one micro-batch at a
    /// time (memory of one micro-batch) while the prompt is computed once.
    pub fn detached(&self) -> Prefix {
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        Prefix {
            kv: self.kv.iter().map(|(k, v)| (leaf(k), leaf(v))).collect(),
            last: leaf(&self.last),
        }
    }

    /// Backward through this prefix's forward of the gradients accumulated in `leaves` (its
    /// [`Prefix::detached`] copy): the chain rule's remaining factor, applied once.
    pub fn backward_from(&self, leaves: &Prefix) {
        let terms: Vec<Tensor> = self
            .tensors()
            .zip(leaves.tensors())
            .filter(|(_, leaf)| leaf.grad().defined())
            .map(|(t, leaf)| (t * leaf.grad()).sum(Kind::Float))
            .collect();
        if terms.is_empty() {
            return;
        }
        let total = Tensor::stack(&terms, 0).sum(Kind::Float);
        if total.requires_grad() {
            total.backward();
        }
    }
}

/// Log-probs of rows continuing `prefix`: `rest`, `rest_mask` are [G, C] ids after the
/// prompt and their scored mask (right-padded); `dense` is [G, C]:
/// log p(rest[g, c] | prompt, rest[g, ..c]).
pub fn continued_logprobs(
    model: &Model,
    prefix: &Prefix,
    rest: &Tensor,
    rest_mask: &Tensor,
) -> TokenLogprobs {
    let (g, c) = rest.size2().expect("rest is [group, seq]");
    let rest_hidden = model.forward_hidden(rest, AttnContext::Prefixed(&prefix.kv));
    let h = rest_hidden.size()[2];
    // The state that predicts rest[:, c]: the prompt's last for c = 0, else rest[:, c-1].
    let last = prefix.last.expand([g, 1, h], false);
    let predictors = Tensor::cat(&[last, rest_hidden.narrow(1, 0, c - 1)], 1);
    let keep = rest_mask.reshape([-1]).to_kind(Kind::Bool);
    let flat = Tensor::arange(g * c, (Kind::Int64, rest.device())).masked_select(&keep);
    let picked = predictors.reshape([-1, h]).index_select(0, &flat);
    let targets = rest.reshape([-1]).index_select(0, &flat);
    scored(model, &picked, &targets, flat, [g, c])
}

/// Log-probs of a group of rows that share one prompt (GRPO's G samples of an episode):
/// the prompt runs forward once and every row continues it (`AttnContext::Prefixed`), each
/// over its own `lens[g]` tokens only, so training costs P + sum(C_g) tokens instead of
/// G*(P+C): no padding is computed. Same values and gradients as `token_logprobs` on the
/// full rows (tested).
///
/// `prompt`: [P] ids; `rest`, `rest_mask`: [G, C] ids after the prompt and their scored
/// mask (right-padded); `lens`: each row's real length (<= C). `dense` is [G, C]:
/// log p(rest[g, c] | prompt, rest[g, ..c]), 0 past a row's length.
pub fn group_token_logprobs(
    model: &Model,
    prompt: &Tensor,
    rest: &Tensor,
    rest_mask: &Tensor,
    lens: &[usize],
) -> TokenLogprobs {
    let prefix = Prefix::forward(model, prompt);
    let (g, c) = rest.size2().expect("rest is [group, seq]");
    debug_assert_eq!(lens.len() as i64, g, "one length per row");
    let (mut rows, mut entropy_sum, mut scored_count) = (Vec::new(), 0.0, 0.0);
    for (row, &len) in lens.iter().enumerate() {
        let len = (len as i64).clamp(1, c);
        let ids = rest.narrow(0, row as i64, 1).narrow(1, 0, len);
        let mask = rest_mask.narrow(0, row as i64, 1).narrow(1, 0, len);
        let n = mask.sum(Kind::Int64).int64_value(&[]) as f64;
        let lp = continued_logprobs(model, &prefix, &ids, &mask);
        entropy_sum += lp.entropy * n;
        scored_count += n;
        rows.push(if len < c {
            let pad = Tensor::zeros([1, c - len], (Kind::Float, rest.device()));
            Tensor::cat(&[lp.dense, pad], 1)
        } else {
            lp.dense
        });
    }
    TokenLogprobs {
        dense: Tensor::cat(&rows, 0),
        entropy: entropy_sum / scored_count.max(1.0),
    }
}
