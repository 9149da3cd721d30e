//! `recthinker logits`: logits of a raw prompt, for parity checks against transformers.

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use lm::device::{parse_device, parse_dtype};
use lm::weights::save_safetensors;
use lm::Policy;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(ClapArgs)]
pub struct Args {
    /// HF model directory.
    #[arg(long, default_value = "checkpoints/base/SmolLM2-135M-Instruct")]
    model: PathBuf,
    /// Raw prompt: no chat template; special tokens only where the tokenizer adds them by default.
    #[arg(long)]
    prompt: String,
    /// Output safetensors file with tensors `logits` [tokens, vocab] (f32) and `input_ids`.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    let device = parse_device(&a.device)?;
    let kind = parse_dtype(&a.dtype)?;
    let policy = Policy::load(&a.model, device, kind)?;
    let ids = policy.tokenizer.encode(&a.prompt, true)?;
    if ids.is_empty() {
        anyhow::bail!("--prompt tokenizes to no tokens");
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(device);
    let logits = tch::no_grad(|| policy.model.forward(&input))
        .squeeze_dim(0)
        .to_kind(Kind::Float);
    let mut tensors = BTreeMap::new();
    tensors.insert("logits".to_string(), logits);
    tensors.insert("input_ids".to_string(), Tensor::from_slice(&ids));
    save_safetensors(&tensors, None, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}
