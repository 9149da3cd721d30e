//! Decoder-only Llama / Qwen2 / Qwen3 on libtorch. Struct fields mirror the HF module tree and
//! every module loads itself under its HF name (`Attention::load(cfg, vb.pp("self_attn"))`), so
//! parameters sit in the `VarStore` as `model.layers.N.self_attn.q_proj.weight` ... and
//! checkpoints load and save without renaming.

pub use crate::attention::{Attention, AttnContext};
pub use crate::layers::{Embedding, Linear, Mlp, RmsNorm};

use crate::attention::CachedStep;
use crate::config::ModelConfig;
use crate::rope::Rope;
use crate::weights::{Checkpoint, VarBuilder};
use anyhow::{Context, Result};
use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// `model.layers.N`: pre-norm attention and MLP blocks with residuals.
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    pub fn load(c: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(c, vb.pp("self_attn"))?,
            mlp: Mlp::load(c, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::load(
                c.hidden_size,
                c.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::load(
                c.hidden_size,
                c.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    rope: Rope,
    pub vs: nn::VarStore,
    pub kind: Kind,
}

impl Model {
    /// Loads an HF Llama/Qwen2/Qwen3 directory onto `device` in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        crate::device::init_torch();
        let config = ModelConfig::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let used = RefCell::new(HashSet::new());
        let vs = nn::VarStore::new(device);
        let modules = Modules::load(&config, VarBuilder::new(&ckpt, &used, &vs, kind))
            .with_context(|| format!("loading model from {}", dir.display()))?;
        let tied = config.tie_word_embeddings;
        let used = used.into_inner();
        let mut unused: Vec<&String> = ckpt
            .names()
            .filter(|n| !used.contains(*n))
            .filter(|n| !(n.ends_with("rotary_emb.inv_freq") || tied && *n == "lm_head.weight"))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            eprintln!(
                "warning: {} checkpoint tensors were not used by the {} model, e.g. `{}`",
                unused.len(),
                config.model_type,
                unused[0]
            );
        }
        let rope = Rope::new(&config, device);
        let Modules {
            embed_tokens,
            layers,
            norm,
            lm_head,
        } = modules;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            vs,
            kind,
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Final hidden states [B, S, H] for `input_ids` [B, S].
    // `x = x + h`, not `x += h`: the in-place add would overwrite a tensor autograd keeps.
    #[allow(clippy::assign_op_pattern)]
    pub fn forward_hidden(&self, input_ids: &Tensor, mut ctx: AttnContext) -> Tensor {
        let (b, s) = input_ids.size2().expect("input_ids is [batch, seq]");
        let device = self.device();
        let step = CachedStep::for_context(&mut ctx, b, s, device);
        let positions = match &step {
            Some(st) => st.positions().shallow_clone(),
            None => Tensor::arange(s, (Kind::Int64, device))
                .unsqueeze(0)
                .expand([b, s], false),
        };
        let rope = self.rope.cos_sin(&positions, self.kind);
        let mut x = self.embed_tokens.forward(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x);
            let h = layer
                .self_attn
                .forward(&h, &rope, i, &mut ctx, step.as_ref());
            x = x + h;
            let h = crate::profile::time("mlp", || {
                layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&x))
            });
            x = x + h;
        }
        self.norm.forward(&x)
    }

    /// Vocabulary logits for hidden states [..., H], in f32. The head is outside autocast:
    /// log-probs (the policy ratio, the SFT loss) keep the model's own precision.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let out = match &self.lm_head {
            Some(head) => crate::autocast::with(None, || head.forward(hidden)),
            None => hidden.linear::<Tensor>(&self.embed_tokens.weight, None),
        };
        out.to_kind(Kind::Float)
    }

    /// Full causal forward: logits [B, S, V] in f32.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.logits(&self.forward_hidden(input_ids, AttnContext::Causal))
    }
}

/// The module tree of `LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM`:
/// `model.{embed_tokens, layers.N, norm}` and `lm_head`.
struct Modules {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Modules {
    fn load(c: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = Embedding::load(c.vocab_size, c.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(c, m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(c.hidden_size, c.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::load(
                c.hidden_size,
                c.vocab_size,
                false,
                vb.pp("lm_head"),
            )?)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }
}
