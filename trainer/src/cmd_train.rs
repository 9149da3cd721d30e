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
        let b = trainer::checkpoint::best(&dir)?.with_context(|| {
            format!(
                "{}: no checkpoint was validated (set eval_every in the run's config)",
                a.checkpoint.display()
            )
        })?;
        let calls = b
            .tool_calls
            .map(|c| format!(", {c:.2} tool calls"))
            .unwrap_or_default();
        println!(
            "best checkpoint by validation NDCG@10: {} ({:.4}{calls})",
            b.path.display(),
            b.value
        );
        b.path
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

#[derive(ClapArgs)]
pub struct AdapterArgs {
    /// The fine-tuned HF directory (e.g. an `export` of the final run).
    #[arg(long)]
    model: PathBuf,
    /// The base HF directory the adapter applies to.
    #[arg(long)]
    base: PathBuf,
    /// Written as the adapter's `base_model_name_or_path` (default: --base as given).
    #[arg(long)]
    base_name: Option<String>,
    /// LoRA rank of the adapter (the truncated SVD of each projection's difference).
    #[arg(long, default_value_t = 32)]
    rank: i64,
    /// Storage type of the factors: bf16 | f32.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    dtype: String,
    /// Output PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    out: PathBuf,
}

/// `recthinker adapter`: a fine-tuned model as one PEFT LoRA adapter on its base.
pub fn adapter_cmd(a: AdapterArgs) -> Result<()> {
    let kind = if a.dtype == "bf16" {
        tch::Kind::BFloat16
    } else {
        tch::Kind::Float
    };
    let name = a
        .base_name
        .clone()
        .unwrap_or_else(|| a.base.display().to_string());
    let t = std::time::Instant::now();
    let x = lm::adapter::extract(&a.base, &a.model, &name, a.rank, kind, &a.out)?;
    let report = serde_json::to_string_pretty(&x)?;
    lm::fsutil::write_atomic(&a.out.join("extraction.json"), report.as_bytes())?;
    println!("{report}");
    println!(
        "wrote {} (rank {}, {:.1} MB, {:.4} of the difference's energy kept) in {:.1?}",
        a.out.display(),
        x.rank,
        x.bytes as f64 / 1e6,
        x.energy_kept,
        t.elapsed()
    );
    Ok(())
}
