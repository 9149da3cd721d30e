//! `recthinker generate`: one prompt in, the completion out.

use anyhow::Result;
use clap::Args as ClapArgs;
use lm::chat::Message;
use lm::device::{parse_device, parse_dtype};
use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::Policy;
use std::io::Write;
use std::path::PathBuf;

#[derive(ClapArgs)]
pub struct Args {
    /// HF model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = "checkpoints/base/SmolLM2-135M-Instruct")]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens when sampling (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Text that stops generation (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let kind = parse_dtype(&a.dtype)?;
    let policy = Policy::load(&a.model, device, kind)?;
    let prompt = if a.chat {
        policy.chat_prompt_ids(&[Message::user(a.prompt.clone())])?
    } else {
        policy.tokenizer.encode(&a.prompt, true)?
    };
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        stop: a.stop,
        seed: a.seed,
        ignore_eos: false,
        constraint: None,
    };
    let mut engine = Engine::new(&policy.model, &policy.tokenizer);
    let row = engine.add_row(&prompt, params)?;
    engine.run()?;
    let ids: Vec<i64> = engine.row(row).generated_ids().collect();
    let text = policy.tokenizer.decode(&ids, true)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}
