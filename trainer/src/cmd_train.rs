//! `recthinker synth`, `recthinker sft` and `recthinker export`.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;

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

pub fn synth_cmd(a: ConfigArgs) -> Result<()> {
    let cfg: trainer::synth::SynthConfig = trainer::config::load(&a.config)?;
    let summary = trainer::synth::run(&cfg, &a.config)?;
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
    /// With a run directory: its `latest` checkpoint, or the `best` by validation NDCG@10
    /// (runs with `eval_every` set).
    #[arg(long, default_value = "latest", value_parser = ["latest", "best"])]
    select: String,
}

pub fn export_cmd(a: ExportArgs) -> Result<()> {
    let dir = a.checkpoint.join("checkpoints");
    let ck = if a.checkpoint.join("state.json").exists() {
        a.checkpoint.clone()
    } else if a.select == "best" {
        let (ck, v) = trainer::checkpoint::best(&dir)?.with_context(|| {
            format!(
                "{}: no checkpoint was validated (set eval_every in the run's config)",
                a.checkpoint.display()
            )
        })?;
        println!(
            "best checkpoint by validation NDCG@10: {} ({v:.4})",
            ck.display()
        );
        ck
    } else {
        trainer::checkpoint::latest(&dir)?
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
