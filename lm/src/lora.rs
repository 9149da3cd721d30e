//! LoRA (Hu et al. 2021): a trainable low-rank update `scale * B A` beside a frozen linear
//! weight, named as PEFT names it (`<module>.lora_A.weight`, `<module>.lora_B.weight`), and
//! merged into the weight at export.

use crate::model::{DecoderLayer, Linear, Model};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    /// Module names as in HF: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            target_modules: MODULES.map(String::from).to_vec(),
        }
    }
}

pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl Linear {
    pub fn forward_lora(&self, x: &Tensor) -> Tensor {
        let base = self.forward_base(x);
        match &self.lora {
            Some(l) => base + x.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scale,
            None => base,
        }
    }
}

/// The projections LoRA can target, by their HF names.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The seven projections of a layer as (parent module, name, linear).
fn projections(layer: &mut DecoderLayer) -> [(&'static str, &'static str, &mut Linear); 7] {
    let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
    [
        ("self_attn", "q_proj", &mut a.q_proj),
        ("self_attn", "k_proj", &mut a.k_proj),
        ("self_attn", "v_proj", &mut a.v_proj),
        ("self_attn", "o_proj", &mut a.o_proj),
        ("mlp", "gate_proj", &mut m.gate_proj),
        ("mlp", "up_proj", &mut m.up_proj),
        ("mlp", "down_proj", &mut m.down_proj),
    ]
}

impl Model {
    /// Freezes the base weights and adds LoRA adapters to the target modules. A is
    /// Kaiming-uniform and B zero (PEFT's default), so the model starts unchanged.
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        if cfg.rank <= 0 {
            bail!("lora.rank must be positive, got {}", cfg.rank);
        }
        for t in &cfg.target_modules {
            if !MODULES.contains(&t.as_str()) {
                bail!(
                    "lora.target_modules: unknown module `{t}` (known: {})",
                    MODULES.join(", ")
                );
            }
        }
        self.vs.freeze();
        let scale = cfg.alpha / cfg.rank as f64;
        let root = self.vs.root();
        let kind = self.kind;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (parent, name, lin) in projections(layer) {
                if !cfg.target_modules.iter().any(|t| t == name) {
                    continue;
                }
                let (out, inp) = (lin.weight.size()[0], lin.weight.size()[1]);
                let p = &root / "model" / "layers" / i / parent / name;
                // PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a=sqrt(5)), B = 0.
                let device = lin.weight.device();
                let bound = 1.0 / (inp as f64).sqrt();
                let a0 = (Tensor::rand([cfg.rank, inp], (Kind::Float, device)) * (2.0 * bound)
                    - bound)
                    .to_kind(kind);
                let b0 = Tensor::zeros([out, cfg.rank], (kind, device));
                let a = (&p / "lora_A").add("weight", a0, true);
                let b = (&p / "lora_B").add("weight", b0, true);
                lin.lora = Some(Lora { a, b, scale });
            }
        }
        Ok(())
    }

    /// Folds every adapter into its weight (W += scale * B A) and drops the adapters.
    pub fn merge_lora(&mut self) {
        tch::no_grad(|| {
            for layer in &mut self.layers {
                for (_, _, lin) in projections(layer) {
                    if let Some(l) = lin.lora.take() {
                        let delta = (l.b.to_kind(Kind::Float).matmul(&l.a.to_kind(Kind::Float))
                            * l.scale)
                            .to_kind(lin.weight.kind());
                        let _ = lin.weight.g_add_(&delta);
                        lin.low = Default::default();
                    }
                }
            }
        });
    }

    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| {
            l.self_attn.q_proj.lora.is_some()
                || l.mlp.up_proj.lora.is_some()
                || l.self_attn.v_proj.lora.is_some()
        })
    }
}
