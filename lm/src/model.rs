//! Decoder-only Llama / Qwen2 on libtorch. Field names mirror the HF tensor names
//! (`model.layers.N.self_attn.q_proj.weight` ...) so checkpoints load without renaming.

use crate::config::{Family, ModelConfig};
use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::weights::Checkpoint;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// A linear layer `y = x W^T + b`, W shaped [out, in] as in HF.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA adapter, when fine-tuning with one (see lora.rs).
    pub lora: Option<crate::lora::Lora>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.lora.is_some() {
            return self.forward_lora(x);
        }
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// As HF: normalize in f32, cast back, then scale.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// Where attention reads keys from.
pub enum AttnContext<'a> {
    /// Plain causal attention over the input only (training, full-prompt logits).
    /// Right padding is harmless: real tokens never attend to later positions.
    Causal,
    /// Incremental decoding: rows `rows` of `cache` already hold `starts[r]` tokens; the
    /// input's S tokens of row r go to positions `starts[r]..starts[r]+S`.
    Cached {
        cache: &'a mut KvCache,
        rows: &'a Tensor,
        all_rows: bool,
        starts: &'a [i64],
    },
    /// Causal attention over the input, keeping each layer's keys and values (with their
    /// autograd history) for `Prefixed` forwards: a prompt shared by a group of rows.
    Record(&'a mut Vec<(Tensor, Tensor)>),
    /// Each input row continues the recorded prefix: its S tokens sit at positions
    /// `P..P+S` and attend to all P prefix keys and causally to their own. Gradients reach
    /// the prefix through the keys and values, summed over the rows.
    Prefixed(&'a [(Tensor, Tensor)]),
}

/// Per-call tensors shared by all layers of one cached or prefixed forward.
struct CachedStep {
    positions: Tensor,
    mask: Tensor,
    keys_len: i64,
}

/// Attention with a boolean mask (true = may attend) and grouped KV heads.
fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, true)
}

/// Decode steps (a few query tokens) use plain matmul attention: libtorch's CPU flash kernel
/// took 1.6 ms per layer for one bf16 query vs 0.33 ms for this (16 rows, 110 keys).
const SHORT_QUERY: i64 = 8;

impl Attention {
    /// softmax(q k^T / sqrt(d)) v with grouped KV heads and a boolean mask [R, 1, S, L];
    /// scores and softmax in f32 as transformers' eager attention does.
    fn short_query_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
        let (r, _, s, d) = q.size4().expect("q is [rows, heads, seq, dim]");
        let groups = self.n_heads / self.n_kv_heads;
        let l = k.size()[2];
        // Query head h reads KV head h / groups, as transformers' repeat_kv.
        let qg = q.reshape([r, self.n_kv_heads, groups * s, d]);
        let scores = qg.matmul(&k.transpose(-1, -2)).to_kind(Kind::Float) * (d as f64).powf(-0.5);
        let scores = scores
            .view([r, self.n_kv_heads, groups, s, l])
            .masked_fill(&mask.logical_not().view([r, 1, 1, s, l]), f64::NEG_INFINITY)
            .view([r, self.n_kv_heads, groups * s, l]);
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        probs.matmul(v).view([r, self.n_heads, s, d])
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        layer: usize,
        ctx: &mut AttnContext,
        step: Option<&CachedStep>,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("attention input is [batch, seq, hidden]");
        let q = self
            .q_proj
            .forward(x)
            .view([b, s, self.n_heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k_proj
            .forward(x)
            .view([b, s, self.n_kv_heads, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .view([b, s, self.n_kv_heads, self.head_dim])
            .transpose(1, 2);
        let (cos, sin) = rope;
        let q = Rope::apply(&q, cos, sin);
        let k = Rope::apply(&k, cos, sin);
        let out = match (ctx, step) {
            (
                AttnContext::Cached {
                    cache,
                    rows,
                    all_rows,
                    ..
                },
                Some(step),
            ) => {
                cache.write(layer, rows, &step.positions, &k, &v);
                let (k_all, v_all) = cache.read(layer, rows, *all_rows, step.keys_len);
                if s <= SHORT_QUERY {
                    self.short_query_attention(&q, &k_all, &v_all, &step.mask)
                } else {
                    masked_attention(&q, &k_all, &v_all, &step.mask)
                }
            }
            (AttnContext::Prefixed(prefix), Some(step)) => {
                let (pk, pv) = &prefix[layer];
                let k_all = Tensor::cat(&[pk.expand([b, -1, -1, -1], false), k], 2);
                let v_all = Tensor::cat(&[pv.expand([b, -1, -1, -1], false), v], 2);
                masked_attention(&q, &k_all, &v_all, &step.mask)
            }
            (ctx, _) => {
                if let AttnContext::Record(store) = ctx {
                    store.push((k.shallow_clone(), v.shallow_clone()));
                }
                Tensor::scaled_dot_product_attention::<Tensor>(
                    &q, &k, &v, None, 0.0, true, None, true,
                )
            }
        };
        let out = out
            .transpose(1, 2)
            .contiguous()
            .view([b, s, self.n_heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}

pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    rope: Rope,
    pub vs: nn::VarStore,
    pub kind: Kind,
}

impl Model {
    /// Loads an HF Llama/Qwen2 directory onto `device` in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        crate::device::init_torch();
        let config = ModelConfig::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let tied = config.tie_word_embeddings;
        let mut used = std::collections::HashSet::new();
        let model = Self::build(
            config,
            |name, shape| {
                used.insert(name.to_string());
                ckpt.load(name, shape, kind, device)
            },
            device,
            kind,
        )
        .with_context(|| format!("loading model from {}", dir.display()))?;
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
                model.config.model_type,
                unused[0]
            );
        }
        Ok(model)
    }

    /// Builds the module tree, fetching every tensor by its HF name through `fetch`.
    pub fn build(
        config: ModelConfig,
        mut fetch: impl FnMut(&str, &[i64]) -> Result<Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = fetch(name, shape)?;
            // VarStore paths nest by component, so the stored name is the HF name again.
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or(name);
            let path = parts.iter().fold(root.clone(), |p, c| p.sub(*c));
            Ok(path.add(leaf, t, true))
        };
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let linear = |get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
                      prefix: &str,
                      out: i64,
                      inp: i64,
                      bias: bool|
         -> Result<Linear> {
            let weight = get(&format!("{prefix}.weight"), &[out, inp])?;
            let bias = if bias {
                Some(get(&format!("{prefix}.bias"), &[out])?)
            } else {
                None
            };
            Ok(Linear {
                weight,
                bias,
                lora: None,
            })
        };
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qkv_bias = c.attention_bias;
            let self_attn = Attention {
                q_proj: linear(
                    &mut get,
                    &format!("{p}.self_attn.q_proj"),
                    c.num_attention_heads * hd,
                    h,
                    qkv_bias,
                )?,
                k_proj: linear(
                    &mut get,
                    &format!("{p}.self_attn.k_proj"),
                    c.num_key_value_heads * hd,
                    h,
                    qkv_bias,
                )?,
                v_proj: linear(
                    &mut get,
                    &format!("{p}.self_attn.v_proj"),
                    c.num_key_value_heads * hd,
                    h,
                    qkv_bias,
                )?,
                // Qwen2 has no o_proj bias; Llama's `attention_bias` covers o_proj too.
                o_proj: linear(
                    &mut get,
                    &format!("{p}.self_attn.o_proj"),
                    h,
                    c.num_attention_heads * hd,
                    c.family == Family::Llama && c.attention_bias,
                )?,
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: hd,
            };
            let mlp = Mlp {
                gate_proj: linear(
                    &mut get,
                    &format!("{p}.mlp.gate_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
                up_proj: linear(
                    &mut get,
                    &format!("{p}.mlp.up_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
                down_proj: linear(
                    &mut get,
                    &format!("{p}.mlp.down_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
            };
            let norm = |get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
                        name: &str|
             -> Result<RmsNorm> {
                Ok(RmsNorm {
                    weight: get(&format!("{p}.{name}.weight"), &[h])?,
                    eps: c.rms_norm_eps,
                })
            };
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm: norm(&mut get, "input_layernorm")?,
                post_attention_layernorm: norm(&mut get, "post_attention_layernorm")?,
            });
        }
        let norm = RmsNorm {
            weight: get("model.norm.weight", &[h])?,
            eps: c.rms_norm_eps,
        };
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(linear(&mut get, "lm_head", c.vocab_size, h, false)?)
        };
        let rope = Rope::new(&config, device);
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
        let step = match &mut ctx {
            AttnContext::Causal | AttnContext::Record(_) => None,
            AttnContext::Prefixed(prefix) => {
                let p = prefix.first().map_or(0, |(k, _)| k.size()[2]);
                let positions = (Tensor::arange(s, (Kind::Int64, device)) + p)
                    .unsqueeze(0)
                    .expand([b, s], false);
                // mask[0, 0, i, j]: every prefix key, then own keys up to the query.
                let own = Tensor::ones([s, s], (Kind::Bool, device)).tril(0);
                let mask = Tensor::cat(&[Tensor::ones([s, p], (Kind::Bool, device)), own], 1)
                    .view([1, 1, s, p + s]);
                Some(CachedStep {
                    positions,
                    mask,
                    keys_len: p + s,
                })
            }
            AttnContext::Cached { cache, starts, .. } => {
                let starts_t = Tensor::from_slice(starts).to_device(device);
                let offsets = Tensor::arange(s, (Kind::Int64, device));
                let positions = starts_t.unsqueeze(1) + offsets.unsqueeze(0);
                let keys_len = starts.iter().copied().max().unwrap_or(0) + s;
                cache.ensure_capacity(keys_len);
                let keys = Tensor::arange(keys_len, (Kind::Int64, device));
                // mask[r, 0, s, j] = key j is at or before query s of row r
                let mask = keys
                    .view([1, 1, 1, keys_len])
                    .le_tensor(&positions.view([b, 1, s, 1]));
                Some(CachedStep {
                    positions,
                    mask,
                    keys_len,
                })
            }
        };
        let positions = match &step {
            Some(st) => st.positions.shallow_clone(),
            None => Tensor::arange(s, (Kind::Int64, device))
                .unsqueeze(0)
                .expand([b, s], false),
        };
        let rope = self.rope.cos_sin(&positions, self.kind);
        let mut x = self.embed_tokens.embedding_for(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x);
            let h = layer
                .self_attn
                .forward(&h, &rope, i, &mut ctx, step.as_ref());
            x = x + h;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x));
            x = x + h;
        }
        self.norm.forward(&x)
    }

    /// Vocabulary logits for hidden states [..., H], in f32.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let out = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.linear::<Tensor>(&self.embed_tokens, None),
        };
        out.to_kind(Kind::Float)
    }

    /// Full causal forward: logits [B, S, V] in f32.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.logits(&self.forward_hidden(input_ids, AttnContext::Causal))
    }
}

trait EmbeddingFor {
    fn embedding_for(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingFor for Tensor {
    fn embedding_for(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, ids, -1, false, false)
    }
}
