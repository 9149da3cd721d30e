//! Supervised fine-tuning on synthesized trajectories: loss on sampled-assistant tokens only,
//! full fine-tuning or LoRA, AdamW with warmup + cosine, gradient accumulation, clipping,
//! periodic validation NDCG, atomic checkpoints and exact resume.

use crate::data_parallel::DataParallel;
use crate::logprobs::{continued_logprobs, token_logprobs, Prefix};
use crate::losses::sft_loss;
use crate::optim::{lr_at, NonFinite, OptimConfig};
use crate::sequence::{tokenize_conversation, TokenSequence};
use crate::train_common::{batch_indices, pad_fraction, pad_rows, positions, RunSpec};
use anyhow::{bail, Context, Result};
use lm::chat::Message;
use lm::lora::LoraConfig;
use lm::Policy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// Where config, metrics and checkpoints go.
    pub run_dir: PathBuf,
    /// The HF model directory to start from.
    pub model: PathBuf,
    /// SFT set (JSON lines with `messages`), as written by `recthinker synth`.
    pub train_file: PathBuf,
    #[serde(default = "crate::config::defaults::cpu")]
    pub device: String,
    #[serde(default = "crate::config::defaults::f32")]
    pub dtype: String,
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    #[serde(default = "crate::config::defaults::four")]
    pub batch_size: usize,
    #[serde(default = "crate::config::defaults::one")]
    pub micro_batch: usize,
    /// Run the tokens that every conversation of a step starts with (the system prompt and
    /// tool list, none of them trained) forward and backward once per step instead of once
    /// per conversation: the same loss and gradients to rounding, less compute.
    #[serde(default = "crate::config::defaults::yes")]
    pub share_prefix: bool,
    /// Longer conversations are cut to this many tokens.
    #[serde(default = "crate::config::defaults::max_len")]
    pub max_len: usize,
    /// Checkpoint every N steps (and at the end).
    #[serde(default = "crate::config::defaults::fifty")]
    pub save_every: usize,
    /// Keep the newest N checkpoints (0: all).
    #[serde(default = "crate::config::defaults::three")]
    pub keep_checkpoints: usize,
    /// Validation: every N steps (0: never), run the agent greedily on the valid split of
    /// `eval_data` for `eval_users` users and log NDCG@10 and the valid rate.
    #[serde(default)]
    pub eval_every: usize,
    pub eval_data: Option<PathBuf>,
    #[serde(default = "crate::config::defaults::eight")]
    pub eval_users: usize,
    #[serde(default)]
    pub eval_agent: rollout::AgentConfig,
    /// Present: train LoRA adapters instead of all weights.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub optim: OptimConfig,
    /// Where metrics go: `jsonl` (metrics.jsonl, which the PNG plots are drawn from) and
    /// `tensorboard` (event files under `run_dir/tb/`).
    #[serde(default = "crate::run_dir::all_reporters")]
    pub report_to: Vec<crate::run_dir::Reporter>,
    /// Linear layers of the training forward in `bf16` (f32 master weights, LoRA and
    /// optimizer state; `lm::autocast`), or `off`. Validation stays in the model's dtype.
    #[serde(default = "crate::config::defaults::off")]
    pub autocast: String,
}

impl SftConfig {
    fn run_spec(&self) -> RunSpec<'_> {
        RunSpec {
            kind: "sft",
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

pub fn load_examples(cfg: &SftConfig, policy: &Policy) -> Result<Vec<TokenSequence>> {
    let text = std::fs::read_to_string(&cfg.train_file)
        .with_context(|| format!("reading {}", cfg.train_file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", cfg.train_file.display(), i + 1))?;
        let messages: Vec<Message> =
            serde_json::from_value(v["messages"].clone()).with_context(|| {
                format!("{}:{}: no `messages` list", cfg.train_file.display(), i + 1)
            })?;
        let mut seq = tokenize_conversation(&policy.tokenizer, &policy.chat, &messages)
            .with_context(|| format!("{}:{}", cfg.train_file.display(), i + 1))?;
        seq.ids.truncate(cfg.max_len);
        seq.mask.truncate(cfg.max_len);
        out.push(seq);
    }
    if out.is_empty() {
        bail!("{}: no training examples", cfg.train_file.display());
    }
    Ok(out)
}

/// Below this many shared tokens a step trains full rows (sharing would not pay).
const MIN_SHARED_PREFIX: usize = 32;

/// The tokens every row starts with and none trains, leaving each row at least one token
/// after them; 0 for fewer than two rows.
pub fn shared_prefix_len(rows: &[&TokenSequence]) -> usize {
    let Some(first) = rows.first().filter(|_| rows.len() > 1) else {
        return 0;
    };
    let limit = rows
        .iter()
        .map(|s| s.ids.len())
        .min()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut p = 0;
    while p < limit
        && rows
            .iter()
            .all(|s| s.ids[p] == first.ids[p] && s.mask[p] == 0)
    {
        p += 1;
    }
    p
}

pub fn run(cfg: &SftConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    // LoRA adapters initialize from the seed.
    tch::manual_seed(cfg.seed as i64);
    // Data parallel when launched as several processes (torchrun, srun).
    let (dp, mut tr) = DataParallel::start_run(&cfg.run_spec(), cfg, resume)?;
    let examples = load_examples(cfg, &tr.policy)?;
    let val_world = match (&cfg.eval_data, cfg.eval_every) {
        (Some(_), n) if n > 0 && !dp.is_main() => None, // rank 0 validates
        (Some(d), n) if n > 0 => Some(tools::world::load(d)?),
        (None, n) if n > 0 => bail!("eval_every is set but eval_data is not"),
        _ => None,
    };
    let trainable_count: i64 = tr.opt.params.iter().map(|(_, p)| p.numel() as i64).sum();
    if dp.is_main() {
        eprintln!(
            "SFT: {} examples, {} trainable parameters{}",
            examples.len(),
            trainable_count,
            if cfg.lora.is_some() { " (LoRA)" } else { "" }
        );
    }
    let autocast = lm::autocast::parse(&cfg.autocast).context("config key `autocast`")?;
    let bar = if dp.is_main() {
        lm::progress::Progress::new("sft", "steps", cfg.steps, tr.start).every(1)
    } else {
        lm::progress::Progress::hidden()
    };
    let end = stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in tr.start..end {
        let t0 = Instant::now();
        let idx = batch_indices(examples.len(), cfg.seed, step, cfg.batch_size);
        let batch: Vec<&TokenSequence> = idx.iter().map(|&i| &examples[i]).collect();
        // Normalize by the batch's loss tokens so accumulation (and the sum over ranks) equals
        // one big batch.
        let tokens: usize = batch
            .iter()
            .map(|s| s.mask[1..].iter().filter(|&&m| m == 1).count())
            .sum();
        let mut loss_sum = 0.0;
        // This rank's rows (all of them in one process), in the data order: a rank's shard
        // is then the same micro-batches as in one process, so data-parallel runs equal
        // single-process ones to rounding (`tests/data_parallel.rs`).
        let mut pads = Vec::new();
        let shard = &batch[dp.shard(batch.len())];
        let model = &tr.policy.model;
        let p = if cfg.share_prefix {
            shared_prefix_len(shard)
        } else {
            0
        };
        // The shared prefix forward once; each micro-batch continues its detached copy and
        // sends its gradient back into it; one backward through the prefix last.
        let prefix = (p >= MIN_SHARED_PREFIX).then(|| {
            let prompt = Tensor::from_slice(&shard[0].ids[..p]).to_device(tr.device);
            let prefix = lm::autocast::with(autocast, || Prefix::forward(model, &prompt));
            let leaves = prefix.detached();
            pads.push((p, p));
            (prefix, leaves)
        });
        let p = if prefix.is_some() { p } else { 0 };
        for micro in shard.chunks(cfg.micro_batch.max(1)) {
            pads.push(positions(micro.iter().map(|s| s.ids.len() - p)));
            let rows: Vec<(&[i64], &[u8])> =
                micro.iter().map(|s| (&s.ids[p..], &s.mask[p..])).collect();
            let (ids, mask) = pad_rows(&rows, tr.device);
            // The log-probs and the mask of the positions they score.
            let (lp, scored) = lm::autocast::with(autocast, || match &prefix {
                Some((_, leaves)) => (
                    continued_logprobs(model, leaves, &ids, &mask),
                    mask.shallow_clone(),
                ),
                None => {
                    let t = mask.size()[1];
                    (token_logprobs(model, &ids, &mask), mask.narrow(1, 1, t - 1))
                }
            });
            let loss = sft_loss(&lp.dense, &scored, tokens.max(1) as f64);
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        if let Some((prefix, leaves)) = &prefix {
            prefix.backward_from(leaves);
        }
        // Every rank now holds the whole batch's gradient and loss.
        let mut sums = [loss_sum];
        dp.all_reduce_grads(&tr.opt, &mut sums)?;
        loss_sum = sums[0];
        loss_sum += tr.inject_debug_fault(step + 1);
        let lr = lr_at(&cfg.optim, step, cfg.steps);
        // A NaN/inf loss or gradient never reaches the weights (`[optim] nonfinite`).
        let grad_norm = match tr.check_finite(cfg.optim.nonfinite, step + 1, loss_sum)? {
            Some(norm) => {
                tr.opt.scale_grads(norm, cfg.optim.max_grad_norm);
                tr.opt.apply(&cfg.optim, lr);
                norm
            }
            None => f64::NAN,
        };
        tr.opt.zero_grad();
        let mut line = serde_json::json!({"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "pad_fraction": pad_fraction(pads.into_iter()), "seconds": t0.elapsed().as_secs_f64()});
        if dp.is_distributed() {
            line["allreduce_seconds"] = serde_json::json!(dp.take_reduce_seconds());
        }
        if cfg.optim.nonfinite == NonFinite::Skip {
            line["skipped_nonfinite"] = serde_json::json!(tr.skipped_nonfinite);
        }
        if let Some(w) = &val_world {
            if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
                let v = crate::evaluate::validate(&tr.policy, w, cfg.eval_users, &cfg.eval_agent)?;
                line["val_ndcg@10"] = serde_json::json!(v.ndcg().ndcg10);
                line["val_valid_rate"] = serde_json::json!(v.valid_rate());
                line["val_tool_calls"] = serde_json::json!(v.mean_tool_calls());
            }
        }
        dp.end_step(&mut tr, step + 1, &line)?;
        bar.set_message(crate::run_dir::summary(
            &line,
            &["loss", "lr", "val_ndcg@10"],
        ));
        bar.inc(1);
    }
    bar.finish();
    dp.cleanup(&cfg.run_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::Reporter;

    fn parse(extra: &str) -> std::result::Result<SftConfig, String> {
        let text =
            format!("run_dir = \"r\"\nmodel = \"m\"\ntrain_file = \"t\"\nsteps = 1\n{extra}");
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_shared_prefix_stops_at_the_first_difference_or_trained_token() {
        let seq = |ids: &[i64], mask: &[u8]| TokenSequence {
            ids: ids.to_vec(),
            mask: mask.to_vec(),
        };
        let a = seq(&[1, 2, 3, 4, 5], &[0, 0, 0, 1, 1]);
        let b = seq(&[1, 2, 3, 9, 9, 9], &[0, 0, 0, 0, 1, 1]);
        let c = seq(&[1, 2, 7], &[0, 0, 1]);
        let trained_early = seq(&[1, 2, 3, 4, 5], &[0, 1, 0, 1, 1]);
        assert_eq!(shared_prefix_len(&[&a, &b]), 3);
        assert_eq!(shared_prefix_len(&[&a, &b, &c]), 2);
        assert_eq!(shared_prefix_len(&[&a, &trained_early]), 1);
        assert_eq!(shared_prefix_len(&[&a, &a]), 3); // stops at the first trained token
        assert_eq!(shared_prefix_len(&[&a]), 0);
        // Every row keeps at least one token after the prefix.
        let short = seq(&[1, 2], &[0, 0]);
        assert_eq!(shared_prefix_len(&[&short, &short]), 1);
    }

    #[test]
    fn report_to_defaults_to_both_and_names_unknown_values() {
        assert_eq!(
            parse("").unwrap().report_to,
            [Reporter::Jsonl, Reporter::Tensorboard]
        );
        let cfg = parse("report_to = [\"tensorboard\"]\n").unwrap();
        assert_eq!(cfg.report_to, [Reporter::Tensorboard]);
        let err = parse("report_to = [\"jsonl\", \"wandb\"]\n").unwrap_err();
        for want in ["report_to", "wandb", "jsonl", "tensorboard"] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }
}
