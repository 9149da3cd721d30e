//! How GRPO's scored rollouts become training micro-batches. The G samples of an episode
//! share their prompt token for token, so by default a group trains as one micro-batch whose
//! prompt runs forward (and backward) once and whose rows each continue it over their own
//! length, unpadded (`group_token_logprobs`): the same loss and gradients as full rows at a
//! fraction of the cost when prompts are long, as an agent's system prompt, profile and
//! candidates are.

use crate::algos::RolloutCorrection;
use crate::logprobs::{group_token_logprobs, token_logprobs, TokenLogprobs};
use crate::losses::{grpo_loss, GrpoLossConfig};
use crate::train_common::{pad_rows, positions};
use lm::Model;
use rollout::AgentRow;
use tch::{Device, Kind, Tensor};

pub enum TrainInput {
    /// Full rows [B, T]; log-probs and mask are [B, T-1] (position t predicts ids[t+1]).
    Rows { ids: Tensor, mask: Tensor },
    /// One group continuing a shared prompt [P]; `rest`, `rest_mask` are [G, C], `lens`
    /// each row's real length (its padding is never computed).
    Shared {
        prompt: Tensor,
        rest: Tensor,
        rest_mask: Tensor,
        lens: Vec<usize>,
    },
}

pub struct MicroBatch {
    pub input: TrainInput,
    /// Advantage of each row.
    pub advantages: Vec<f64>,
    /// The engine's log-probs of the sampled tokens, aligned with `score_mask` (only when a
    /// rollout correction needs them).
    pub rollout_lp: Option<Tensor>,
    /// (real, computed) token positions (`train_common::positions`): the padding it carries.
    pub positions: (usize, usize),
}

/// Rows of floats padded with 0 into [rows, T] (T the longest row).
fn pad_floats(rows: &[&[f32]], device: Device) -> Tensor {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut out = vec![0f32; rows.len() * t];
    for (b, r) in rows.iter().enumerate() {
        out[b * t..b * t + r.len()].copy_from_slice(r);
    }
    Tensor::from_slice(&out)
        .view([rows.len() as i64, t as i64])
        .to_device(device)
}

impl MicroBatch {
    pub fn rows(&self) -> usize {
        self.advantages.len()
    }

    pub fn logprobs(&self, model: &Model) -> TokenLogprobs {
        match &self.input {
            TrainInput::Rows { ids, mask } => token_logprobs(model, ids, mask),
            TrainInput::Shared {
                prompt,
                rest,
                rest_mask,
                lens,
            } => group_token_logprobs(model, prompt, rest, rest_mask, lens),
        }
    }

    /// The scored positions, aligned with `logprobs(..).dense`.
    pub fn score_mask(&self) -> Tensor {
        match &self.input {
            TrainInput::Rows { mask, .. } => {
                let t = mask.size()[1];
                mask.narrow(1, 1, t - 1)
            }
            TrainInput::Shared { rest_mask, .. } => rest_mask.shallow_clone(),
        }
    }
}

/// Micro-batches of the rows that train: those with an advantage and a scored token. With
/// `share_prompt`, one per group (rows of one episode are contiguous in `rows`); otherwise
/// `micro_batch` rows each.
pub fn micro_batches(
    rows: &[AgentRow],
    advantages: &[Option<f64>],
    share_prompt: bool,
    micro_batch: usize,
    with_rollout_lp: bool,
    device: Device,
) -> Vec<MicroBatch> {
    let train: Vec<(&AgentRow, f64)> = rows
        .iter()
        .zip(advantages)
        .filter_map(|(r, a)| a.map(|a| (r, a)))
        .filter(|(r, _)| r.mask.contains(&1))
        .collect();
    let advantages = |rows: &[(&AgentRow, f64)]| rows.iter().map(|(_, a)| *a).collect();
    let full_rows = |chunk: &[(&AgentRow, f64)]| {
        let rows: Vec<(&[i64], &[u8])> = chunk
            .iter()
            .map(|(r, _)| (&r.ids[..], &r.mask[..]))
            .collect();
        let (ids, mask) = pad_rows(&rows, device);
        // Position t of the log-probs predicts ids[t + 1].
        let rollout_lp = with_rollout_lp.then(|| {
            let lps: Vec<&[f32]> = chunk.iter().map(|(r, _)| &r.logprobs[1..]).collect();
            pad_floats(&lps, device)
        });
        MicroBatch {
            input: TrainInput::Rows { ids, mask },
            advantages: advantages(chunk),
            rollout_lp,
            positions: positions(chunk.iter().map(|(r, _)| r.ids.len())),
        }
    };
    if !share_prompt {
        // Rows of similar length share a micro-batch (longest first): less padding, and the
        // loss does not depend on the order (`micro_batch_weight`).
        let mut train = train;
        if micro_batch > 1 {
            train.sort_by_key(|(r, _)| std::cmp::Reverse(r.ids.len()));
        }
        return train.chunks(micro_batch.max(1)).map(full_rows).collect();
    }
    train
        .chunk_by(|a, b| a.0.episode == b.0.episode)
        .map(|group| {
            let p = group[0].0.prompt_tokens;
            let prompt = &group[0].0.ids[..p];
            let shareable = p > 0
                && group.iter().all(|(r, _)| {
                    r.ids.len() > p && &r.ids[..p] == prompt && r.mask[..p].iter().all(|&m| m == 0)
                });
            if !shareable {
                return full_rows(group);
            }
            let rest: Vec<(&[i64], &[u8])> = group
                .iter()
                .map(|(r, _)| (&r.ids[p..], &r.mask[p..]))
                .collect();
            let (rest, rest_mask) = pad_rows(&rest, device);
            let rollout_lp = with_rollout_lp.then(|| {
                let lps: Vec<&[f32]> = group.iter().map(|(r, _)| &r.logprobs[p..]).collect();
                pad_floats(&lps, device)
            });
            let lens: Vec<usize> = group.iter().map(|(r, _)| r.ids.len() - p).collect();
            // Each row continues the prompt over its own length: nothing padded is computed.
            let real: usize = lens.iter().sum();
            MicroBatch {
                rollout_lp,
                positions: (p + real, p + real),
                input: TrainInput::Shared {
                    prompt: Tensor::from_slice(prompt).to_device(device),
                    rest,
                    rest_mask,
                    lens,
                },
                advantages: advantages(group),
            }
        })
        .collect()
}

/// Log-probs fixed before the inner epochs, aligned with a micro-batch's `score_mask`.
pub struct Fixed {
    /// The behaviour policy's (None: the current policy's, detached, as when inner_epochs = 1).
    pub old: Option<Tensor>,
    /// The frozen reference's, when the KL term is on.
    pub reference: Option<Tensor>,
}

/// What one pass logs: loss, KL and clip fraction aggregated as the loss is; entropy as
/// the mean over all scored tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassStats {
    pub loss: f64,
    pub kl: f64,
    pub clip_fraction: f64,
    pub entropy: f64,
    /// Mean truncated-IS weight over scored tokens, and the fraction truncated (rollout
    /// correction on; 0 otherwise).
    pub is_weight: f64,
    pub is_truncated: f64,
}

/// The scored tokens and the rows of a batch: what each micro-batch's loss weight divides
/// by. Under data parallelism, the sums over every rank's micro-batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchTotals {
    pub tokens: f64,
    pub rows: usize,
}

fn scored_tokens(m: &Tensor) -> f64 {
    m.sum(Kind::Int64).int64_value(&[]) as f64
}

/// The totals of these micro-batches.
pub fn batch_totals(micro: &[MicroBatch]) -> BatchTotals {
    BatchTotals {
        tokens: micro.iter().map(|mb| scored_tokens(&mb.score_mask())).sum(),
        rows: micro.iter().map(MicroBatch::rows).sum(),
    }
}

/// One pass over the batch: backward of the GRPO loss aggregated over all micro-batches
/// (each weighted so the sum equals the aggregation over the whole batch), gradients left
/// accumulated in the model.
pub fn accumulate_gradients(
    model: &Model,
    micro: &[MicroBatch],
    fixed: &[Fixed],
    loss_cfg: &GrpoLossConfig,
    correction: &RolloutCorrection,
) -> PassStats {
    let totals = batch_totals(micro);
    accumulate_gradients_of(model, micro, fixed, loss_cfg, correction, totals)
}

/// [`accumulate_gradients`] for a part of a batch whose whole has `totals` (this rank's
/// micro-batches of a data-parallel step): each micro-batch is weighted by its share of the
/// whole, so the gradients and statistics summed over the parts are the whole batch's.
pub fn accumulate_gradients_of(
    model: &Model,
    micro: &[MicroBatch],
    fixed: &[Fixed],
    loss_cfg: &GrpoLossConfig,
    correction: &RolloutCorrection,
    totals: BatchTotals,
) -> PassStats {
    let masks: Vec<Tensor> = micro.iter().map(MicroBatch::score_mask).collect();
    let tokens = scored_tokens;
    let (total_tokens, total_rows) = (totals.tokens, totals.rows);
    let mut stats = PassStats::default();
    for ((mb, tmask), fx) in micro.iter().zip(&masks).zip(fixed) {
        let device = tmask.device();
        let adv = Tensor::from_slice(&mb.advantages.iter().map(|a| *a as f32).collect::<Vec<_>>())
            .to_device(device);
        let lp = mb.logprobs(model);
        let detached = lp.dense.detach();
        let old = fx.old.as_ref().unwrap_or(&detached);
        let token_share = tokens(tmask) / total_tokens.max(1.0);
        let is_weights = mb.rollout_lp.as_ref().map(|r| {
            let w = correction.weights(old, r);
            tch::no_grad(|| {
                let m = tmask.to_kind(Kind::Float);
                let n = m.sum(Kind::Float).clamp_min(1.0);
                stats.is_weight +=
                    ((&w * &m).sum(Kind::Float) / &n).double_value(&[]) * token_share;
                let cut = w.ge(correction.threshold).to_kind(Kind::Float) * &m;
                stats.is_truncated += (cut.sum(Kind::Float) / &n).double_value(&[]) * token_share;
            });
            w
        });
        let terms = grpo_loss(
            &lp.dense,
            old,
            fx.reference.as_ref(),
            &adv,
            tmask,
            loss_cfg,
            is_weights.as_ref(),
        );
        let weight = loss_cfg.aggregation.micro_batch_weight(
            tokens(tmask),
            mb.rows(),
            total_tokens,
            total_rows,
        );
        let loss = terms.loss * weight;
        loss.backward();
        stats.loss += loss.double_value(&[]);
        stats.kl += terms.kl * weight;
        stats.clip_fraction += terms.clip_fraction * weight;
        // Entropy is logged as the mean over the batch's tokens, whatever the aggregation.
        stats.entropy += lp.entropy * token_share;
    }
    stats
}
