//! `recthinker`: the command-line entry point.

mod cmd_bench;
mod cmd_data;
mod cmd_eval;
mod cmd_generate;
mod cmd_logits;
mod cmd_tool;
mod cmd_train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Restarts this program with a short OpenMP spin (GOMP_SPINCOUNT=3000) when libtorch will run
/// several threads and the user set neither that nor OMP_WAIT_POLICY. libgomp (libtorch's
/// OpenMP) reads both once, as it loads, before `main`: changing them takes a fresh start
/// (~0.15 s). Its default spin (300,000) made two 2-thread jobs on 2 cores 3.3x slower than
/// one thread each; at 3,000 they ran as fast as one thread each, and one job alone decoded as
/// fast as with the default (passive waiting cost 20% there). docs/benchmarks.md.
#[cfg(target_os = "linux")]
fn restart_with_short_openmp_spin() {
    use std::os::unix::process::CommandExt;
    let chosen = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if chosen || lm::torch_env::threads() <= 1 {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // `exec` returns only if it failed (no /proc, say): then go on with libgomp's default.
    let _failed = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GOMP_SPINCOUNT", "3000")
        .exec();
}

#[derive(Parser)]
#[command(
    name = "recthinker",
    version,
    about = "Train and evaluate tool-using LLM recommendation agents (RecThinker) on libtorch",
    long_about = "Train and evaluate tool-using LLM recommendation agents (RecThinker) on libtorch.\n\n\
Models are HF Llama / Qwen2 directories (config.json, safetensors, tokenizer.json). \
The default base model is created by scripts/setup.sh under checkpoints/base/.\n\
Threads: RECTHINKER_THREADS (default: one per available core; when several jobs share the \
cores, give each its share)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for a prompt and print only the completion.
    Generate(cmd_generate::Args),
    /// Write the model's logits for a raw prompt to a safetensors file (for parity checks).
    Logits(cmd_logits::Args),
    /// Prepare datasets (HDF5), inspect them, print episodes.
    Data(cmd_data::Args),
    /// Call one tool for one episode and print the observation.
    Tool(cmd_tool::ToolArgs),
    /// The tool suite as a service: `tools serve` (a Model Context Protocol server).
    Tools(cmd_tool::ToolsArgs),
    /// An OpenAI-compatible chat-completions server for a model (`/v1/chat/completions`).
    Serve(trainer::serve::Args),
    /// Evaluate a classical recommender (random, pop, itemknn, bpr, sasrec, ease) or the fused evidence.
    Baseline(cmd_tool::BaselineArgs),
    /// Run the agent on evaluation episodes; report NDCG, validity, tool use, throughput.
    Eval(cmd_eval::Args),
    /// Synthesize SFT trajectories with a teacher and a rejection filter (--config TOML).
    Synth(cmd_train::ConfigArgs),
    /// Supervised fine-tuning, full or LoRA (--config TOML; --resume continues a run).
    Sft(cmd_train::ConfigArgs),
    /// GRPO reinforcement learning with the agent in the loop (--config TOML; --resume).
    Rl(cmd_train::ConfigArgs),
    /// Export a checkpoint as an HF directory (LoRA merged).
    Export(cmd_train::ExportArgs),
    /// A fine-tuned model as one PEFT LoRA adapter on its base (truncated SVD of the difference).
    Adapter(cmd_train::AdapterArgs),
    /// Redraw a run's PNG plots (run_dir/plots/) from its metrics.jsonl.
    Plot {
        /// The run directory.
        run_dir: std::path::PathBuf,
    },
    /// Write a self-contained HTML page: trajectories (eval/synth/baseline JSON lines) as a
    /// sortable table with each conversation, or a run directory's metrics as curves.
    View(trainer::view::Args),
    /// Benchmarks (see scripts/bench/).
    Bench(cmd_bench::Args),
}

fn main() {
    #[cfg(target_os = "linux")]
    restart_with_short_openmp_spin();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Generate(a) => cmd_generate::run(a),
        Command::Serve(a) => trainer::serve::run(a),
        Command::Logits(a) => cmd_logits::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Plot { run_dir } => trainer::plot::plot_metrics(&run_dir)
            .map(|n| println!("wrote {n} plots to {}", run_dir.join("plots").display())),
        Command::View(a) => {
            trainer::view::run(&a).map(|w| println!("wrote {} ({})", w.path.display(), w.what))
        }
        Command::Data(a) => cmd_data::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Synth(a) => cmd_train::synth_cmd(a),
        Command::Sft(a) => cmd_train::sft_cmd(a),
        Command::Rl(a) => cmd_train::rl_cmd(a),
        Command::Export(a) => cmd_train::export_cmd(a),
        Command::Adapter(a) => cmd_train::adapter_cmd(a),
        Command::Tool(a) => cmd_tool::run_tool(a),
        Command::Tools(a) => cmd_tool::run_tools(a),
        Command::Baseline(a) => cmd_tool::run_baseline(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
