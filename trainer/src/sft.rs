//! Supervised fine-tuning on synthesized trajectories: loss on sampled-assistant tokens only,
//! full fine-tuning or LoRA, AdamW with warmup + cosine, gradient accumulation, clipping,
//! periodic validation NDCG, atomic checkpoints and exact resume.

use crate::checkpoint;
use crate::logprobs::token_logprobs;
use crate::losses::sft_loss;
use crate::optim::{lr_at, AdamW, OptimConfig};
use crate::run_dir::RunDir;
use crate::sequence::{tokenize_conversation, TokenSequence};
use anyhow::{bail, Context, Result};
use lm::chat::Message;
use lm::device::{parse_device, parse_dtype};
use lm::lora::LoraConfig;
use lm::{Model, Policy};
use rand::seq::SliceRandom;
use rand::SeedableRng;
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
}

/// The trainable parameters, by name (adapters only under LoRA).
pub fn trainable(model: &Model) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
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

/// Example indices of step `step`: epochs are seeded permutations, so the data position
/// follows from the step alone (and resumes exactly).
pub fn batch_indices(n: usize, seed: u64, step: usize, batch: usize) -> Vec<usize> {
    (0..batch)
        .map(|j| {
            let pos = step * batch + j;
            let (epoch, k) = (pos / n, pos % n);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
                seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
            ));
            order[k]
        })
        .collect()
}

/// Right-padded [B, T] ids and [B, T] mask tensors.
pub fn pad(seqs: &[&TokenSequence], device: tch::Device) -> (Tensor, Tensor) {
    let rows: Vec<(&[i64], &[u8])> = seqs.iter().map(|s| (&s.ids[..], &s.mask[..])).collect();
    pad_rows(&rows, device)
}

/// Right-pads (ids, mask) rows with 0 into [rows, longest] tensors.
pub fn pad_rows(rows: &[(&[i64], &[u8])], device: tch::Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
    let mut ids = vec![0i64; rows.len() * t];
    let mut mask = vec![0u8; rows.len() * t];
    for (b, (row_ids, row_mask)) in rows.iter().enumerate() {
        ids[b * t..b * t + row_ids.len()].copy_from_slice(row_ids);
        mask[b * t..b * t + row_mask.len()].copy_from_slice(row_mask);
    }
    let shape = [rows.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Greedy agent rollouts on validation episodes: (mean NDCG@10 with invalid = 0, valid rate).
pub fn validate(
    policy: &Policy,
    world: &tools::World,
    users: usize,
    agent: &rollout::AgentConfig,
) -> Result<(f64, f64)> {
    let eps: Vec<&datasets::Episode> = world
        .data
        .select(datasets::Split::Valid, datasets::Subset::All)
        .into_iter()
        .take(users)
        .collect();
    let registry = tools::suite::standard(agent.tool_max_chars);
    let mut engine = lm::engine::Engine::new(&policy.model, &policy.tokenizer);
    engine.max_context = agent.max_context;
    let rows = rollout::run_agent(
        &mut engine,
        &policy.tokenizer,
        &policy.chat,
        world,
        &registry,
        &eps,
        1,
        agent,
        0,
    )?;
    let scored: Vec<_> = rows
        .iter()
        .map(|r| crate::trajectory::score(r, eps[r.episode], &reward::RewardConfig::default()))
        .collect();
    let n = scored.len().max(1) as f64;
    Ok((
        scored.iter().map(|s| s.reward.acc).sum::<f64>() / n,
        scored.iter().filter(|s| s.valid).count() as f64 / n,
    ))
}

pub fn run(cfg: &SftConfig, resume: bool, stop_after: Option<usize>) -> Result<()> {
    let device = parse_device(&cfg.device)?;
    let kind = parse_dtype(&cfg.dtype)?;
    tch::manual_seed(cfg.seed as i64);
    let mut policy = Policy::load(&cfg.model, device, kind)?;
    if let Some(l) = &cfg.lora {
        policy.model.add_lora(l)?;
    }
    let examples = load_examples(cfg, &policy)?;
    let val_world = match (&cfg.eval_data, cfg.eval_every) {
        (Some(d), n) if n > 0 => Some(tools::world::load(d)?),
        (None, n) if n > 0 => bail!("eval_every is set but eval_data is not"),
        _ => None,
    };
    let run = RunDir::create(&cfg.run_dir, &serde_json::to_value(cfg)?)?;
    let mut opt = AdamW::new(trainable(&policy.model));
    let start = checkpoint::resume_or_start(&run, &policy.model, &mut opt, resume)?;
    let trainable_count: i64 = opt.params.iter().map(|(_, p)| p.numel() as i64).sum();
    eprintln!(
        "SFT: {} examples, {} trainable parameters{}",
        examples.len(),
        trainable_count,
        if cfg.lora.is_some() { " (LoRA)" } else { "" }
    );
    let bar = crate::run_dir::progress_bar("sft", "steps", cfg.steps, start)?;
    let end = stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    for step in start..end {
        let t0 = Instant::now();
        let idx = batch_indices(examples.len(), cfg.seed, step, cfg.batch_size);
        let batch: Vec<&TokenSequence> = idx.iter().map(|&i| &examples[i]).collect();
        // Normalize by the batch's loss tokens so accumulation equals one big batch.
        let tokens: usize = batch
            .iter()
            .map(|s| s.mask[1..].iter().filter(|&&m| m == 1).count())
            .sum();
        let mut loss_sum = 0.0;
        for micro in batch.chunks(cfg.micro_batch.max(1)) {
            let (ids, mask) = pad(micro, device);
            let lp = token_logprobs(&policy.model, &ids, &mask);
            let t = mask.size()[1];
            let loss = sft_loss(&lp.dense, &mask.narrow(1, 1, t - 1), tokens.max(1) as f64);
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let grad_norm = opt.clip_grad_norm(cfg.optim.max_grad_norm);
        let lr = lr_at(&cfg.optim, step, cfg.steps);
        opt.apply(&cfg.optim, lr);
        opt.zero_grad();
        let mut line = serde_json::json!({"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "seconds": t0.elapsed().as_secs_f64()});
        if let Some(w) = &val_world {
            if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
                let (ndcg, valid) = validate(&policy, w, cfg.eval_users, &cfg.eval_agent)?;
                line["val_ndcg@10"] = serde_json::json!(ndcg);
                line["val_valid_rate"] = serde_json::json!(valid);
            }
        }
        run.log(&line)?;
        bar.set_message(format!("loss {loss_sum:.4}"));
        bar.inc(1);
        let done = step + 1;
        if done % cfg.save_every.max(1) == 0 || done == cfg.steps {
            let state = serde_json::json!({"step": done, "kind": "sft", "base_model": cfg.model, "lora": cfg.lora, "dtype": cfg.dtype, "seed": cfg.seed});
            run.checkpoint(done, &policy.model, &opt, &state, cfg.keep_checkpoints)?;
        }
    }
    bar.finish();
    Ok(())
}
