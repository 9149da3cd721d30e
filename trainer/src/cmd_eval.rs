//! `recthinker eval`: run the agent on evaluation episodes and report NDCG, validity, tool use
//! and throughput.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use datasets::{Split, Subset};
use lm::device::{parse_device, parse_dtype};
use lm::Policy;
use reward::RewardConfig;
use rollout::{AgentConfig, AgentEnv};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use trainer::evaluate::{evaluate, EvalOptions};
use trainer::trajectory::to_json;

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
    #[arg(long, default_value_t = EvalOptions::default().samples)]
    samples: usize,
    /// Rows (episodes x samples) generated together.
    #[arg(long, default_value_t = EvalOptions::default().batch_rows)]
    batch: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = AgentConfig::default().temperature)]
    temperature: f64,
    #[arg(long, default_value_t = AgentConfig::default().top_p)]
    top_p: f64,
    #[arg(long, default_value_t = AgentConfig::default().max_turns)]
    max_turns: usize,
    #[arg(long, default_value_t = AgentConfig::default().max_new_tokens)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = AgentConfig::default().max_context)]
    max_context: usize,
    #[arg(long, default_value_t = AgentConfig::default().prompt_history_len)]
    prompt_history_len: usize,
    /// Rank from the prompt alone (the LLMRank-style baseline).
    #[arg(long)]
    no_tools: bool,
    /// Tool suite: `standard` (the five paper tools and rank_candidates) or `paper` (the five).
    #[arg(long, default_value = "standard")]
    tool_suite: String,
    /// Constrain each answer's tokens to a permutation of the candidate indices (structured
    /// output); the report says so. Off by default: report these numbers in rows of their own.
    #[arg(long)]
    constrained_answers: bool,
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
        constrained_answers: a.constrained_answers,
        ..Default::default()
    };
    let registry = match a.tool_suite.as_str() {
        "standard" => tools::suite::standard(cfg.tool_max_chars),
        "paper" => tools::suite::paper(cfg.tool_max_chars),
        other => anyhow::bail!("--tool-suite `{other}`: expected standard or paper"),
    };
    let env = AgentEnv::for_policy(&policy, &world, &registry, &cfg);
    let opts = EvalOptions {
        samples: a.samples,
        batch_rows: a.batch,
        seed: a.seed,
        reward: RewardConfig::default(),
    };
    let mut traj_out = match &a.trajectories {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let bar = lm::progress::Progress::new("eval", "episodes", episodes.len() * a.samples, 0);
    let (mut done, mut valid) = (0usize, 0usize);
    let stats = evaluate(&policy, &env, &episodes, &opts, |s, ep| {
        if let Some(out) = traj_out.as_mut() {
            writeln!(
                out,
                "{}",
                to_json(s, ep, &world.data, &a.split, a.with_tokens)
            )?;
        }
        done += 1;
        valid += s.valid as usize;
        bar.set_message(format!("valid {valid}/{done}"));
        bar.inc(1);
        Ok(())
    })?;
    bar.finish();
    if let Some(mut out) = traj_out {
        out.flush()?;
    }
    let mut report = stats.report();
    report["seconds"] = json!(start.elapsed().as_secs_f64());
    report["model"] = json!(a.model.display().to_string());
    report["data"] = json!(a.data.display().to_string());
    report["subset"] = json!(a.subset);
    report["split"] = json!(a.split);
    report["samples"] = json!(a.samples);
    report["tools"] = json!(!a.no_tools);
    report["constrained_answers"] = json!(a.constrained_answers);
    report["tool_suite"] = json!(a.tool_suite);
    report["config"] = serde_json::to_value(&cfg)?;
    if lm::profile::enabled() {
        let secs = stats.generation_seconds;
        eprintln!(
            "profile (RECTHINKER_PROFILE; {secs:.1} s of generation):\n{}",
            lm::profile::render(secs)
        );
        report["profile"] = json!({
            "sections": lm::profile::snapshot().iter()
                .map(|(n, c, s)| json!({"name": n, "calls": c, "seconds": s}))
                .collect::<Vec<_>>(),
            "counts": lm::profile::counts().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        });
    }
    lm::fsutil::write_atomic(&a.out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let s = stats.ndcg();
    println!(
        "{} {} ({} episodes): NDCG@1 {:.4}  NDCG@5 {:.4}  NDCG@10 {:.4}  valid {:.2}  tool calls/episode {:.2}  bad calls {}",
        a.subset, a.split, stats.episodes(), s.ndcg1, s.ndcg5, s.ndcg10, stats.valid_rate(), stats.mean_tool_calls(), stats.bad_calls
    );
    Ok(())
}
