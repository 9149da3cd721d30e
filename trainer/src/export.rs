//! Export: a checkpoint as an HF directory (config.json, model.safetensors, tokenizer
//! files, generation_config.json) with LoRA merged, loadable by transformers.

use crate::checkpoint;
use anyhow::{Context, Result};
use lm::fsutil::{write_atomic, write_dir_atomic};
use lm::lora::LoraConfig;
use lm::weights::save_safetensors;
use lm::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// Verifies the checkpoint against its manifest first: a damaged one is refused naming the
/// file, and nothing is written.
pub fn export(ckpt: &Path, out: &Path) -> Result<()> {
    checkpoint::verify_or_warn(ckpt)?;
    let state = checkpoint::read_state(ckpt)?;
    let base = PathBuf::from(
        state["base_model"]
            .as_str()
            .context("checkpoint state has no base_model")?,
    );
    let mut policy = Policy::load(&base, Device::Cpu, Kind::Float)?;
    if let Some(l) = state.get("lora").filter(|v| !v.is_null()) {
        let cfg: LoraConfig =
            serde_json::from_value(l.clone()).context("checkpoint lora config")?;
        policy.model.add_lora(&cfg)?;
    }
    checkpoint::load_weights(&policy.model, ckpt)?;
    policy.model.merge_lora();
    let weights: BTreeMap<String, tch::Tensor> = policy
        .model
        .vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !n.contains("lora_"))
        .map(|(n, t)| (n, t.detach()))
        .collect();
    write_dir_atomic(out, |tmp| {
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors(&weights, Some(meta), &tmp.join("model.safetensors"))?;
        let mut config = policy.model.config.raw.clone();
        config["dtype"] = "float32".into();
        if let Some(o) = config.as_object_mut() {
            o.remove("quantization_config");
            o.remove("torch_dtype");
        }
        write_atomic(
            &tmp.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "generation_config.json",
        ] {
            if base.join(f).exists() {
                std::fs::copy(base.join(f), tmp.join(f)).with_context(|| format!("copying {f}"))?;
            }
        }
        if !tmp.join("generation_config.json").exists() {
            let g = serde_json::json!({"eos_token_id": policy.tokenizer.eos_ids, "bos_token_id": policy.model.config.bos_token_id});
            write_atomic(
                &tmp.join("generation_config.json"),
                g.to_string().as_bytes(),
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("exporting into {}", out.display()))?;
    Ok(())
}
