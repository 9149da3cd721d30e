//! Self-attention with grouped KV heads, RoPE, optional per-head q/k RMSNorm (Qwen3), and the
//! contexts it reads keys from: plain causal, the KV cache, or a recorded shared prefix.

use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::layers::{Linear, RmsNorm};
use crate::rope::Rope;
use crate::weights::VarBuilder;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// `model.layers.N.self_attn`.
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3: RMSNorm over each query / key head ([head_dim]) after the projection, before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
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
        /// Short-query steps of some slots run on the whole cache in place
        /// (`Attention::in_place_attention`) instead of on a gathered copy of their rows.
        in_place: bool,
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
pub(crate) struct CachedStep {
    positions: Tensor,
    mask: Tensor,
    keys_len: i64,
    /// A short-query step of some of the cache's slots: the mask for every slot ([slots, 1,
    /// S, L]; the group's rows as in `mask`, the others attend to everything and are
    /// dropped), so attention runs on the cache in place (`in_place_attention`).
    all_slots_mask: Option<Tensor>,
}

impl CachedStep {
    /// Positions and mask of a `Cached` or `Prefixed` forward of S tokens for B rows (None for
    /// `Causal` and `Record`, which use the plain causal kernel); grows the cache if needed.
    pub(crate) fn for_context(
        ctx: &mut AttnContext,
        b: i64,
        s: i64,
        device: Device,
    ) -> Option<Self> {
        match ctx {
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
                    all_slots_mask: None,
                })
            }
            AttnContext::Cached {
                cache,
                starts,
                rows,
                all_rows,
                in_place,
            } => {
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
                let all_slots_mask = (*in_place && s <= SHORT_QUERY && !*all_rows).then(|| {
                    Tensor::ones([cache.slots(), 1, s, keys_len], (Kind::Bool, device))
                        .index_copy(0, rows, &mask)
                });
                Some(CachedStep {
                    positions,
                    mask,
                    keys_len,
                    all_slots_mask,
                })
            }
        }
    }

    pub(crate) fn positions(&self) -> &Tensor {
        &self.positions
    }
}

/// Attention with a boolean mask (true = may attend) and grouped KV heads.
fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, true)
}

/// Decode steps (a few query tokens) use plain matmul attention: libtorch's CPU flash kernel
/// took 1.6 ms per layer for one bf16 query vs 0.33 ms for this (16 rows, 110 keys).
pub(crate) const SHORT_QUERY: i64 = 8;

impl Attention {
    pub fn load(c: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let qkv = c.attention_bias;
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(RmsNorm::load(hd, c.rms_norm_eps, vb.pp("q_norm"))?),
                Some(RmsNorm::load(hd, c.rms_norm_eps, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: Linear::load(h, q_out, qkv, vb.pp("q_proj"))?,
            k_proj: Linear::load(h, kv_out, qkv, vb.pp("k_proj"))?,
            v_proj: Linear::load(h, kv_out, qkv, vb.pp("v_proj"))?,
            o_proj: Linear::load(q_out, h, c.o_proj_bias, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// `proj(x)` split into heads [B, heads, S, D], each head RMS-normed when `norm` is set.
    fn heads(&self, proj: &Linear, norm: &Option<RmsNorm>, x: &Tensor, heads: i64) -> Tensor {
        let (b, s, _) = x.size3().expect("attention input is [batch, seq, hidden]");
        let t = proj.forward(x).view([b, s, heads, self.head_dim]);
        let t = match norm {
            Some(n) => n.forward(&t),
            None => t,
        };
        t.transpose(1, 2)
    }

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

    /// Short-query attention of some of the cache's slots (`rows`) on the cache in place:
    /// the queries are scattered into a zero tensor over every slot, attention runs on the
    /// slots' keys and values as views (no copy), and the rows' outputs are picked. Reading
    /// every slot once costs less than gathering the rows' keys and values (a read and a
    /// write of each) and reading them again, which dominated decode at long contexts.
    fn in_place_attention(
        &self,
        q: &Tensor,
        cache: &KvCache,
        layer: usize,
        rows: &Tensor,
        step: &CachedStep,
        all_slots_mask: &Tensor,
    ) -> Tensor {
        let (k_all, v_all) = cache.read(layer, rows, true, step.keys_len);
        let size = q.size();
        let q_all = Tensor::zeros(
            [cache.slots(), size[1], size[2], size[3]],
            (q.kind(), q.device()),
        )
        .index_copy(0, rows, q);
        self.short_query_attention(&q_all, &k_all, &v_all, all_slots_mask)
            .index_select(0, rows)
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        layer: usize,
        ctx: &mut AttnContext,
        step: Option<&CachedStep>,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("attention input is [batch, seq, hidden]");
        let q = self.heads(&self.q_proj, &self.q_norm, x, self.n_heads);
        let k = self.heads(&self.k_proj, &self.k_norm, x, self.n_kv_heads);
        let v = self.heads(&self.v_proj, &None, x, self.n_kv_heads);
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
                use crate::profile::time;
                time("kv_cache.write", || {
                    cache.write(layer, rows, &step.positions, &k, &v)
                });
                if let Some(all_slots_mask) = &step.all_slots_mask {
                    return self.o_proj_of(
                        time("attention.decode", || {
                            self.in_place_attention(&q, cache, layer, rows, step, all_slots_mask)
                        }),
                        b,
                        s,
                    );
                }
                let (k_all, v_all) = time("kv_cache.read", || {
                    cache.read(layer, rows, *all_rows, step.keys_len)
                });
                if s <= SHORT_QUERY {
                    time("attention.decode", || {
                        self.short_query_attention(&q, &k_all, &v_all, &step.mask)
                    })
                } else {
                    time("attention.prefill", || {
                        masked_attention(&q, &k_all, &v_all, &step.mask)
                    })
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
        self.o_proj_of(out, b, s)
    }

    /// The output projection of attention's [B, heads, S, D] result.
    fn o_proj_of(&self, out: Tensor, b: i64, s: i64) -> Tensor {
        let out = out
            .transpose(1, 2)
            .contiguous()
            .view([b, s, self.n_heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}
