//! `recthinker bench generate`: decode throughput of the generation engine, measured the way
//! scripts/bench/hf_generate.py measures transformers (same prompts, greedy, fixed length).

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use lm::chat::Message;
use lm::device::{parse_device, parse_dtype};
use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::Policy;
use std::path::PathBuf;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Time prefill + N greedy tokens for a batch of chat prompts; prints one JSON line.
    Generate(GenerateArgs),
}

#[derive(ClapArgs)]
struct GenerateArgs {
    #[arg(long, default_value = "checkpoints/base/SmolLM2-135M-Instruct")]
    model: PathBuf,
    /// Text file, one user prompt per line (cycled to fill the batch).
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Timed repetitions; the best is reported.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Generate(g) => generate(g),
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let policy = Policy::load(&a.model, device, parse_dtype(&a.dtype)?)?;
    let text = std::fs::read_to_string(&a.prompts)
        .with_context(|| format!("reading {}", a.prompts.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("{}: no prompts", a.prompts.display());
    }
    let prompts: Vec<Vec<i64>> = (0..a.batch)
        .map(|i| policy.chat_prompt_ids(&[Message::user(lines[i % lines.len()])]))
        .collect::<Result<_>>()?;
    let time = |n: usize| -> Result<f64> {
        let mut engine = Engine::new(&policy.model, &policy.tokenizer);
        let params = SamplingParams {
            max_new_tokens: n,
            ignore_eos: true,
            ..Default::default()
        };
        for p in &prompts {
            engine.add_row(p, params.clone())?;
        }
        let start = Instant::now();
        engine.run()?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        Ok(start.elapsed().as_secs_f64())
    };
    time(2)?; // warm-up
    let best = |n: usize| -> Result<f64> {
        let mut b = f64::INFINITY;
        for _ in 0..a.repeats.max(1) {
            b = b.min(time(n)?);
        }
        Ok(b)
    };
    let t1 = best(1)?;
    let tn = best(a.new_tokens)?;
    let decode_tokens = (a.batch * (a.new_tokens - 1)) as f64;
    let report = serde_json::json!({
        "impl": "recthinker",
        "batch": a.batch,
        "new_tokens": a.new_tokens,
        "prompt_tokens": prompts.iter().map(Vec::len).sum::<usize>(),
        "prefill_s": t1,
        "total_s": tn,
        "decode_tokens_per_s": decode_tokens / (tn - t1).max(1e-9),
        "threads": tch::get_num_threads(),
        "device": a.device,
        "dtype": a.dtype,
    });
    println!("{report}");
    Ok(())
}
