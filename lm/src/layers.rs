//! The small modules of the decoder: token embedding, linear layer, RMSNorm and the gated MLP.
//! Each loads itself from a [`VarBuilder`] positioned at its HF module name.

use crate::config::ModelConfig;
use crate::weights::VarBuilder;
use anyhow::Result;
use tch::{Kind, Tensor};

/// The token embedding `[vocab, hidden]` (`model.embed_tokens.weight`).
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn load(vocab: i64, hidden: i64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[vocab, hidden])?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

/// A linear layer `y = x W^T + b`, W shaped [out, in] as in HF.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter, when fine-tuning with one (see lora.rs).
    pub lora: Option<crate::lora::Lora>,
    /// The frozen weight and bias cast for autocast, made at the first autocast call.
    pub(crate) low: std::sync::OnceLock<(Tensor, Option<Tensor>)>,
}

impl Linear {
    /// Loads `weight` [out, in] and, with `bias`, `bias` [out].
    pub fn load(inp: i64, out: i64, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get("weight", &[out, inp])?;
        let bias = if bias {
            Some(vb.get("bias", &[out])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
            low: Default::default(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.lora.is_some() {
            return self.forward_lora(x);
        }
        self.forward_base(x)
    }

    /// `x W^T + b`, in the autocast kind when one is on (`crate::autocast`).
    pub(crate) fn forward_base(&self, x: &Tensor) -> Tensor {
        let Some(kind) = crate::autocast::current().filter(|k| *k != self.weight.kind()) else {
            return x.linear(&self.weight, self.bias.as_ref());
        };
        let y = if self.weight.requires_grad() {
            let b = self.bias.as_ref().map(|b| b.to_kind(kind));
            x.to_kind(kind)
                .linear(&self.weight.to_kind(kind), b.as_ref())
        } else {
            let (w, b) = self.low.get_or_init(|| {
                tch::no_grad(|| {
                    (
                        self.weight.to_kind(kind),
                        self.bias.as_ref().map(|b| b.to_kind(kind)),
                    )
                })
            });
            if w.kind() == kind {
                x.to_kind(kind).linear(w, b.as_ref())
            } else {
                x.to_kind(kind).linear(
                    &w.to_kind(kind),
                    b.as_ref().map(|b| b.to_kind(kind)).as_ref(),
                )
            }
        };
        y.to_kind(x.kind())
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `weight` [dim].
    pub fn load(dim: i64, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?,
            eps,
        })
    }

    /// As HF: normalize in f32 over the last dimension, cast back, then scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn load(c: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(h, i, bias, vb.pp("gate_proj"))?,
            up_proj: Linear::load(h, i, bias, vb.pp("up_proj"))?,
            down_proj: Linear::load(i, h, bias, vb.pp("down_proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}
