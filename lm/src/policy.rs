//! A loaded checkpoint: model, tokenizer and chat template together.

use crate::chat::{ChatTemplate, Message};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub struct Policy {
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
}

impl Policy {
    /// Loads an HF model directory, or a PEFT LoRA adapter directory (`adapter_config.json`,
    /// no `config.json`): its base model with the adapter merged in, the base's tokenizer and
    /// chat template, `dir` the adapter's.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        if crate::adapter::is_adapter_dir(dir) {
            let cfg = crate::adapter::read_config(dir)?;
            let base = crate::adapter::base_dir(dir, &cfg)?;
            let mut policy = Self::load(&base, device, kind)?;
            crate::adapter::merge_into(&policy.model, dir, &cfg)
                .with_context(|| format!("loading the adapter {}", dir.display()))?;
            policy.dir = dir.to_path_buf();
            return Ok(policy);
        }
        if !dir.join("config.json").exists() {
            anyhow::bail!(
                "{}: not a model directory (no config.json); run scripts/setup.sh to create the base model",
                dir.display()
            );
        }
        let model = Model::load(dir, device, kind)?;
        let tokenizer = Tokenizer::from_dir(dir, &model.config.eos_token_ids)?;
        let template = tokenizer.chat_template(dir)?;
        let chat = ChatTemplate::new(
            template,
            tokenizer.bos_token.clone(),
            tokenizer.eos_token.clone(),
        )
        .with_context(|| format!("chat template of {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            chat,
        })
    }

    /// Token ids of a chat prompt ending with the assistant header. The rendered template
    /// already holds any BOS it wants, so no special tokens are added on top.
    pub fn chat_prompt_ids(&self, messages: &[Message]) -> Result<Vec<i64>> {
        let text = self.chat.render(messages, true, None)?;
        self.tokenizer.encode(&text, false)
    }
}
