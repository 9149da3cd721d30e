//! `recthinker tool`, `recthinker tools serve` (`trainer::mcp_server`) and `recthinker baseline`.

use anyhow::{anyhow, Result};
use clap::{Args as ClapArgs, Subcommand};
use datasets::{Split, Subset};
use std::path::PathBuf;
use tools::baselines::{target_rank, Method};
use tools::EpisodeView;
use trainer::mcp_server::{self, find_episode, Env, Transport};

#[derive(ClapArgs)]
pub struct ToolArgs {
    /// Prepared HDF5 file.
    #[arg(long)]
    data: PathBuf,
    /// SPLIT:SUBSET:INDEX, e.g. test:dense:0.
    #[arg(long, default_value = "test:dense:0")]
    episode: String,
    /// The call as JSON: {"name": ..., "arguments": {...}}.
    #[arg(long)]
    call: String,
    /// Cap on the observation's length in characters.
    #[arg(long, default_value_t = 2000)]
    max_chars: usize,
}

pub fn run_tool(a: ToolArgs) -> Result<()> {
    let world = tools::world::load(&a.data)?;
    let e = find_episode(&world, &a.episode).map_err(|m| anyhow!("--{m}"))?;
    let registry = tools::suite::standard(a.max_chars);
    let obs = registry.call_text(&world, &EpisodeView::new(&world, e), &a.call);
    println!("{}", obs.text);
    Ok(())
}

#[derive(ClapArgs)]
pub struct ToolsArgs {
    #[command(subcommand)]
    command: ToolsCommand,
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// Serve the tool suite as a Model Context Protocol server (stdio or streamable HTTP):
    /// every tool takes an optional "episode" (SPLIT:SUBSET:INDEX), and `select_episode`
    /// sets the session's default.
    Serve(ServeArgs),
}

#[derive(ClapArgs)]
struct ServeArgs {
    /// Prepared HDF5 file.
    #[arg(long)]
    data: PathBuf,
    /// stdio (one client on stdin/stdout) or http (streamable HTTP at http://HOST:PORT/mcp).
    #[arg(long, default_value = "stdio", value_parser = ["stdio", "http"])]
    transport: String,
    /// HTTP address to bind (--transport http).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// HTTP port (--transport http; 0 picks a free one, printed on stderr).
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// Cap on an observation's length in characters (as `recthinker tool`).
    #[arg(long, default_value_t = 2000)]
    max_chars: usize,
}

pub fn run_tools(a: ToolsArgs) -> Result<()> {
    let ToolsCommand::Serve(a) = a.command;
    let world = tools::world::load(&a.data)?;
    let env = Env::new(world, tools::suite::standard(a.max_chars));
    let transport = match a.transport.as_str() {
        "http" => Transport::Http {
            host: a.host,
            port: a.port,
        },
        _ => Transport::Stdio,
    };
    mcp_server::serve(env, transport)
}

#[derive(ClapArgs)]
pub struct BaselineArgs {
    #[arg(long)]
    data: PathBuf,
    /// random | pop | itemknn | bpr | sasrec | ease | transitions | fusion[:all|collaborative|sequential|popular|adaptive]
    #[arg(long)]
    method: String,
    #[arg(long, default_value = "dense")]
    subset: String,
    #[arg(long, default_value = "test")]
    split: String,
    /// Seed for random scores and tie-breaking.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the metrics as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write each episode's rank as a JSON line (the paired bootstrap's input,
    /// `scripts/paired_bootstrap.py`), keyed like `recthinker eval --trajectories`.
    #[arg(long)]
    per_episode: Option<PathBuf>,
}

pub fn run_baseline(a: BaselineArgs) -> Result<()> {
    let world = tools::world::load(&a.data)?;
    let method = Method::parse(&a.method)?;
    let eps = world
        .data
        .select(Split::parse(&a.split)?, Subset::parse(&a.subset)?);
    let ranks: Vec<usize> = eps
        .iter()
        .map(|e| target_rank(&world, e, method, a.seed))
        .collect();
    let s = reward::NdcgSummary::from_ranks(&ranks);
    println!(
        "{} {} {}: NDCG@1 {:.4}  NDCG@5 {:.4}  NDCG@10 {:.4}  ({} users)",
        method.name(),
        a.subset,
        a.split,
        s.ndcg1,
        s.ndcg5,
        s.ndcg10,
        ranks.len()
    );
    if let Some(path) = &a.per_episode {
        let mut text = String::new();
        for (e, &rank) in eps.iter().zip(&ranks) {
            let line = serde_json::json!({
                "episode": {"split": a.split, "user": world.data.users[e.user as usize].raw_id,
                            "pos": e.pos, "target_index": e.target_index + 1},
                "sample": 0, "method": method.name(), "valid": true, "rank": rank,
                "ndcg@10": reward::ndcg_at_rank(rank, 10),
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        lm::fsutil::write_atomic(path, text.as_bytes())?;
    }
    if let Some(out) = a.out {
        let v = serde_json::json!({"ndcg@1": s.ndcg1, "ndcg@5": s.ndcg5, "ndcg@10": s.ndcg10, "users": ranks.len(),
            "method": method.name(), "subset": a.subset, "split": a.split, "seed": a.seed});
        lm::fsutil::write_atomic(&out, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
