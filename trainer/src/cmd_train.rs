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
