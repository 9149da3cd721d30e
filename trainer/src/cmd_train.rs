//! `recthinker synth`, `recthinker sft` and `recthinker export`.

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use datasets::Split;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use rollout::agent::{run_agent, AgentConfig};
use rollout::device::{parse_device, parse_dtype};
use rollout::engine::Engine;
use rollout::Policy;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use trainer::synth;

#[derive(ClapArgs)]
pub struct ConfigArgs {
    /// TOML config (see configs/ for documented examples).
    #[arg(long)]
    config: PathBuf,
    /// Continue the run from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps (the schedule still spans the configured total).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Prepared HDF5 file.
    pub data: PathBuf,
    /// Output SFT set (JSON lines); a summary goes beside it (`.summary.json`).
    pub out: PathBuf,
    /// scripted | model
    #[serde(default = "default_teacher")]
    pub teacher: String,
    #[serde(default = "default_split")]
    pub split: String,
    /// Use at most this many episodes of the split.
    pub limit_episodes: Option<usize>,
    /// Keep trajectories with NDCG@10 at or above this.
    #[serde(default = "default_min_ndcg")]
    pub min_ndcg: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub agent: AgentConfig,
    /// For teacher = "model".
    pub model: Option<ModelTeacher>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTeacher {
    pub dir: PathBuf,
    #[serde(default = "trainer::config::defaults::four")]
    pub samples: usize,
    #[serde(default = "trainer::config::defaults::sixteen")]
    pub batch: usize,
    #[serde(default = "trainer::config::defaults::cpu")]
    pub device: String,
    #[serde(default = "trainer::config::defaults::f32")]
    pub dtype: String,
}

fn default_teacher() -> String {
    "scripted".into()
}
fn default_split() -> String {
    "train".into()
}
fn default_min_ndcg() -> f64 {
    0.5
}
pub fn synth_cmd(a: ConfigArgs) -> Result<()> {
    let cfg: SynthConfig = trainer::config::load(&a.config)?;
    let world = tools::world::load(&cfg.data)?;
    let reg = tools::suite::standard(cfg.agent.tool_max_chars);
    let mut episodes: Vec<&datasets::Episode> = world
        .data
        .episodes(Split::parse(&cfg.split)?)
        .iter()
        .collect();
    if let Some(k) = cfg.limit_episodes {
        episodes.truncate(k);
    }
    let bar = ProgressBar::new(episodes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("synth {bar:30} {pos}/{len} episodes [{elapsed}<{eta}] {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    // Per episode: the teacher's candidate conversations (with their tool-call counts).
    let candidates: Vec<Vec<synth::Candidate>> = match cfg.teacher.as_str() {
        "scripted" => episodes
            .par_iter()
            .map(|ep| {
                let c = synth::scripted(
                    &world,
                    &reg,
                    ep,
                    cfg.agent.prompt_history_len,
                    cfg.agent.max_turns,
                );
                bar.inc(1);
                c
            })
            .collect(),
        "model" => {
            let m = cfg
                .model
                .as_ref()
                .context("teacher = \"model\" needs a [model] table (dir, samples, ...)")?;
            let policy = Policy::load(&m.dir, parse_device(&m.device)?, parse_dtype(&m.dtype)?)?;
            let mut all = Vec::new();
            let per = (m.batch / m.samples.max(1)).max(1);
            for (b, chunk) in episodes.chunks(per).enumerate() {
                let mut engine = Engine::new(&policy.model, &policy.tokenizer);
                engine.max_context = cfg.agent.max_context;
                let rows = run_agent(
                    &mut engine,
                    &policy.tokenizer,
                    &policy.chat,
                    &world,
                    &reg,
                    chunk,
                    m.samples,
                    &cfg.agent,
                    cfg.seed + (b * per * m.samples) as u64,
                )?;
                let mut grouped: Vec<Vec<synth::Candidate>> =
                    (0..chunk.len()).map(|_| Vec::new()).collect();
                for r in rows {
                    let bad = r.bad_calls();
                    grouped[r.episode].push(synth::Candidate {
                        tool_calls: r.calls.len(),
                        bad_calls: bad,
                        messages: r.messages,
                    });
                }
                all.extend(grouped);
                bar.inc(chunk.len() as u64);
            }
            all
        }
        other => bail!(
            "{}: teacher `{other}`: expected scripted or model",
            a.config.display()
        ),
    };
    bar.finish();
    if let Some(dir) = cfg.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = cfg.out.with_extension("jsonl.tmp");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut kept = Vec::new();
    for (ep, cands) in episodes.iter().zip(candidates) {
        if let Some((c, ndcg)) = synth::select(cands, ep, cfg.min_ndcg) {
            let line = serde_json::json!({"user": world.data.users[ep.user as usize].raw_id, "pos": ep.pos, "teacher": cfg.teacher,
                "ndcg@10": ndcg, "tool_calls": c.tool_calls, "messages": c.messages});
            writeln!(out, "{line}")?;
            kept.push((c.tool_calls, ndcg));
        }
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &cfg.out)?;
    let summary = synth::summary(&kept, episodes.len());
    rollout::fsutil::write_atomic(
        &cfg.out.with_extension("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!("{summary}");
    Ok(())
}

pub fn sft_cmd(a: ConfigArgs) -> Result<()> {
    let cfg: trainer::sft::SftConfig = trainer::config::load(&a.config)?;
    trainer::sft::run(&cfg, a.resume, a.stop_after)
}

#[derive(ClapArgs)]
pub struct ExportArgs {
    /// A checkpoint directory (run_dir/checkpoints/step-N) or a run directory (uses latest).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output HF directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn export_cmd(a: ExportArgs) -> Result<()> {
    let ck = if a.checkpoint.join("state.json").exists() {
        a.checkpoint.clone()
    } else {
        trainer::checkpoint::latest(&a.checkpoint.join("checkpoints"))?
            .with_context(|| format!("{}: no checkpoint found", a.checkpoint.display()))?
    };
    trainer::export::export(&ck, &a.out)?;
    println!("exported {} to {}", ck.display(), a.out.display());
    Ok(())
}

pub fn rl_cmd(a: ConfigArgs) -> Result<()> {
    let cfg: trainer::rl::RlConfig = trainer::config::load(&a.config)?;
    trainer::rl::run(&cfg, a.resume, a.stop_after)
}
