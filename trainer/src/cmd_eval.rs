//! `recthinker eval`: run the agent on evaluation episodes and report NDCG, validity, tool use
//! and throughput.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use datasets::{Split, Subset};
use lm::device::{parse_device, parse_dtype};
use lm::engine::Engine;
use lm::Policy;
use reward::{NdcgSummary, RewardConfig};
use rollout::{run_agent, AgentConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use trainer::trajectory::{score, to_json};

#[derive(ClapArgs)]
pub struct Args {
    /// Prepared HDF5 file (`recthinker data prepare`).
    #[arg(long)]
    data: PathBuf,
    /// HF model directory.
    #[arg(long, default_value = "checkpoints/base/SmolLM2-135M-Instruct")]
    model: PathBuf,
    #[arg(long, default_value = "dense")]
    subset: String,
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate only the first K users of the subset.
    #[arg(long)]
    limit_users: Option<usize>,
    /// Samples per episode (with --temperature > 0 they differ).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Rows (episodes x samples) generated together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 6)]
    max_turns: usize,
    #[arg(long, default_value_t = 384)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 4096)]
    max_context: usize,
    #[arg(long, default_value_t = 5)]
    prompt_history_len: usize,
    /// Rank from the prompt alone (the LLMRank-style baseline).
    #[arg(long)]
    no_tools: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report file (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Also write every trajectory as a JSON line.
    #[arg(long)]
    trajectories: Option<PathBuf>,
    /// Include token ids, mask and log-probs in the trajectories.
    #[arg(long)]
    with_tokens: bool,
}

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let device = parse_device(&a.device)?;
    let world = tools::world::load(&a.data)?;
    let policy = Policy::load(&a.model, device, parse_dtype(&a.dtype)?)?;
    let split = Split::parse(&a.split)?;
    let mut episodes = world.data.select(split, Subset::parse(&a.subset)?);
    if let Some(k) = a.limit_users {
        let users: Vec<u32> = episodes
            .iter()
            .map(|e| e.user)
            .fold(Vec::new(), |mut v, u| {
                if !v.contains(&u) {
                    v.push(u);
                }
                v
            });
        let keep: std::collections::HashSet<u32> = users.into_iter().take(k).collect();
        episodes.retain(|e| keep.contains(&e.user));
    }
    let cfg = AgentConfig {
        max_turns: a.max_turns,
        max_new_tokens: a.max_new_tokens,
        max_context: a.max_context,
        prompt_history_len: a.prompt_history_len,
        temperature: a.temperature,
        top_p: a.top_p,
        use_tools: !a.no_tools,
        ..Default::default()
    };
    let registry = tools::suite::standard(cfg.tool_max_chars);
    let reward_cfg = RewardConfig::default();
    let mut traj_out = match &a.trajectories {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let per_batch = (a.batch / a.samples.max(1)).max(1);
    let bar = trainer::run_dir::progress_bar("eval", "episodes", episodes.len() * a.samples, 0)?;
    let (mut ranks, mut valid, mut calls, mut bad, mut generated) =
        (Vec::new(), 0usize, 0usize, 0usize, 0usize);
    let mut per_tool: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let gen_start = Instant::now();
    for (b, chunk) in episodes.chunks(per_batch).enumerate() {
        let mut engine = Engine::new(&policy.model, &policy.tokenizer);
        engine.max_context = cfg.max_context;
        let rows = run_agent(
            &mut engine,
            &policy.tokenizer,
            &policy.chat,
            &world,
            &registry,
            chunk,
            a.samples,
            &cfg,
            a.seed.wrapping_add((b * per_batch * a.samples) as u64),
        )?;
        for row in &rows {
            let ep = chunk[row.episode];
            let s = score(row, ep, &reward_cfg);
            // Invalid episodes score 0 on every NDCG (rank beyond any cut-off).
            ranks.push(s.rank.unwrap_or(usize::MAX));
            valid += s.valid as usize;
            calls += row.calls.len();
            bad += row.bad_calls();
            generated += row.generated_tokens;
            for c in &row.calls {
                *per_tool
                    .entry(c.name.clone().unwrap_or_else(|| "(malformed)".into()))
                    .or_default() += 1;
            }
            if let Some(r) = &s.invalid_reason {
                *reasons.entry(r.clone()).or_default() += 1;
            }
            if let Some(out) = traj_out.as_mut() {
                writeln!(
                    out,
                    "{}",
                    to_json(&s, ep, &world.data, &a.split, a.with_tokens)
                )?;
            }
        }
        bar.inc(rows.len() as u64);
        bar.set_message(format!("valid {}/{}", valid, ranks.len()));
    }
    bar.finish();
    if let Some(mut out) = traj_out {
        out.flush()?;
    }
    let gen_seconds = gen_start.elapsed().as_secs_f64();
    let n = ranks.len().max(1) as f64;
    let s = NdcgSummary::from_ranks(&ranks);
    let report = serde_json::json!({
        "ndcg@1": s.ndcg1, "ndcg@5": s.ndcg5, "ndcg@10": s.ndcg10,
        "valid_rate": valid as f64 / n,
        "mean_tool_calls": calls as f64 / n,
        "tool_calls": per_tool,
        "bad_calls": bad,
        "episodes": ranks.len(),
        "tokens_generated": generated,
        "seconds": start.elapsed().as_secs_f64(),
        "generation_seconds": gen_seconds,
        "episodes_per_second": ranks.len() as f64 / gen_seconds.max(1e-9),
        "generated_tokens_per_second": generated as f64 / gen_seconds.max(1e-9),
        "invalid_reasons": reasons,
        "model": a.model.display().to_string(), "data": a.data.display().to_string(),
        "subset": a.subset, "split": a.split, "samples": a.samples, "tools": !a.no_tools,
        "config": cfg,
    });
    lm::fsutil::write_atomic(&a.out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "{} {} ({} episodes): NDCG@1 {:.4}  NDCG@5 {:.4}  NDCG@10 {:.4}  valid {:.2}  tool calls/episode {:.2}  bad calls {}",
        a.subset, a.split, ranks.len(), s.ndcg1, s.ndcg5, s.ndcg10, valid as f64 / n, calls as f64 / n, bad
    );
    Ok(())
}
