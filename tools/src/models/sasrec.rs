//! SASRec (Kang & McAuley 2018): a causal self-attention encoder over the item sequence,
//! trained with one sampled negative per position (binary cross-entropy), on libtorch.

use super::TrainOptions;
use anyhow::{bail, Context, Result};
use datasets::store::{Reader, Writer};
use datasets::Event;
use lm::progress::Progress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct SasRecConfig {
    pub max_len: i64,
    pub hidden: i64,
    pub blocks: usize,
    pub dropout: f64,
    pub lr: f64,
    pub batch: usize,
}

impl Default for SasRecConfig {
    fn default() -> Self {
        Self {
            max_len: 50,
            hidden: 64,
            blocks: 2,
            dropout: 0.2,
            lr: 1e-3,
            batch: 128,
        }
    }
}

struct Block {
    attention_layernorm: nn::LayerNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    forward_layernorm: nn::LayerNorm,
    conv1: nn::Linear,
    conv2: nn::Linear,
}

pub struct SasRecModel {
    cfg: SasRecConfig,
    item_emb: nn::Embedding,
    pos_emb: nn::Embedding,
    blocks: Vec<Block>,
    last_layernorm: nn::LayerNorm,
}

impl SasRecModel {
    fn new(p: &nn::Path, n_items: i64, cfg: SasRecConfig) -> Self {
        let d = cfg.hidden;
        let emb = nn::EmbeddingConfig {
            padding_idx: 0,
            ..Default::default()
        };
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let b = p / "blocks" / i;
                Block {
                    attention_layernorm: nn::layer_norm(
                        &b / "attention_layernorm",
                        vec![d],
                        Default::default(),
                    ),
                    q: nn::linear(&b / "q", d, d, Default::default()),
                    k: nn::linear(&b / "k", d, d, Default::default()),
                    v: nn::linear(&b / "v", d, d, Default::default()),
                    forward_layernorm: nn::layer_norm(
                        &b / "forward_layernorm",
                        vec![d],
                        Default::default(),
                    ),
                    conv1: nn::linear(&b / "conv1", d, d, Default::default()),
                    conv2: nn::linear(&b / "conv2", d, d, Default::default()),
                }
            })
            .collect();
        Self {
            cfg,
            // Item ids are shifted by one: 0 is padding.
            item_emb: nn::embedding(p / "item_emb", n_items + 1, d, emb),
            pos_emb: nn::embedding(p / "pos_emb", cfg.max_len, d, Default::default()),
            blocks,
            last_layernorm: nn::layer_norm(p / "last_layernorm", vec![d], Default::default()),
        }
    }

    /// Hidden states [B, L, d] for left-padded sequences of shifted ids [B, L].
    fn encode(&self, seqs: &Tensor, train: bool) -> Tensor {
        let (b, l) = seqs.size2().expect("[batch, len]");
        let d = self.cfg.hidden;
        let keep = seqs.ne(0).unsqueeze(-1).to_kind(Kind::Float);
        let positions = Tensor::arange(l, (Kind::Int64, seqs.device()))
            .unsqueeze(0)
            .expand([b, l], false);
        let mut x =
            self.item_emb.forward(seqs) * (d as f64).sqrt() + self.pos_emb.forward(&positions);
        x = x.dropout(self.cfg.dropout, train) * &keep;
        let causal = Tensor::ones([l, l], (Kind::Bool, seqs.device())).tril(0);
        for blk in &self.blocks {
            let q_in = blk.attention_layernorm.forward(&x);
            let (q, k, v) = (blk.q.forward(&q_in), blk.k.forward(&x), blk.v.forward(&x));
            let att = Tensor::scaled_dot_product_attention(
                &q.unsqueeze(1),
                &k.unsqueeze(1),
                &v.unsqueeze(1),
                Some(&causal),
                if train { self.cfg.dropout } else { 0.0 },
                false,
                None,
                false,
            )
            .squeeze_dim(1);
            x = q_in + att;
            x = blk.forward_layernorm.forward(&x);
            let ff = blk
                .conv2
                .forward(
                    &blk.conv1
                        .forward(&x)
                        .dropout(self.cfg.dropout, train)
                        .relu(),
                )
                .dropout(self.cfg.dropout, train);
            x = (x + ff) * &keep;
        }
        self.last_layernorm.forward(&x)
    }
}

/// The trained model and its weights, kept as a VarStore on CPU.
pub struct SasRecWeights {
    pub vs: nn::VarStore,
    pub model: SasRecModel,
    pub n_items: i64,
}

/// Left-pads (and truncates to the last `len`) a sequence of item ids, shifted by one.
fn padded(items: &[u32], len: usize) -> Vec<i64> {
    let tail = &items[items.len().saturating_sub(len)..];
    let mut v = vec![0i64; len - tail.len()];
    v.extend(tail.iter().map(|&i| i as i64 + 1));
    v
}

/// Held while a SASRec trains: initialization and dropout draw from libtorch's one global
/// generator, so two trainings interleaving in one process (tests, or both horizons trained
/// in parallel) would not be reproducible from their seeds.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn train(train: &[Vec<Event>], n_items: usize, opts: &TrainOptions) -> Result<SasRecWeights> {
    lm::torch_env::init();
    // A panic in another training leaves nothing behind that this one reads.
    let _global_rng = TRAINING.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(opts.seed as i64);
    let cfg = SasRecConfig::default();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SasRecModel::new(&vs.root(), n_items as i64, cfg);
    let mut opt = nn::Adam {
        beta1: 0.9,
        beta2: 0.98,
        wd: 0.0,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(&vs, cfg.lr)?;
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5A5);
    let users: Vec<usize> = (0..train.len()).filter(|&u| train[u].len() >= 2).collect();
    let seen: Vec<HashSet<u32>> = train
        .iter()
        .map(|s| s.iter().map(|e| e.item).collect())
        .collect();
    let len = cfg.max_len as usize;
    let bar = if opts.progress {
        Progress::new("SASRec", "epochs", opts.sasrec_epochs, 0)
    } else {
        Progress::hidden()
    };
    for _ in 0..opts.sasrec_epochs {
        let mut order = users.clone();
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(cfg.batch) {
            let (mut inp, mut pos, mut neg) = (Vec::new(), Vec::new(), Vec::new());
            for &u in chunk {
                let items: Vec<u32> = train[u].iter().map(|e| e.item).collect();
                inp.extend(padded(&items[..items.len() - 1], len));
                let p = padded(&items[1..], len);
                neg.extend(p.iter().map(|&x| {
                    if x == 0 {
                        return 0;
                    }
                    loop {
                        let j = rng.random_range(0..n_items as u32);
                        if !seen[u].contains(&j) {
                            break j as i64 + 1;
                        }
                    }
                }));
                pos.extend(p);
            }
            let b = chunk.len() as i64;
            let shape = [b, cfg.max_len];
            let (inp, pos, neg) = (
                Tensor::from_slice(&inp).view(shape),
                Tensor::from_slice(&pos).view(shape),
                Tensor::from_slice(&neg).view(shape),
            );
            let h = model.encode(&inp, true);
            let pos_logit =
                (&h * model.item_emb.forward(&pos)).sum_dim_intlist(-1, false, Kind::Float);
            let neg_logit =
                (&h * model.item_emb.forward(&neg)).sum_dim_intlist(-1, false, Kind::Float);
            let mask = pos.ne(0).to_kind(Kind::Float);
            let loss = ((-pos_logit.log_sigmoid() - (-neg_logit).log_sigmoid()) * &mask)
                .sum(Kind::Float)
                / mask.sum(Kind::Float);
            opt.backward_step(&loss);
            total += loss.double_value(&[]);
        }
        bar.set_message(format!(
            "loss {:.4}",
            total / users.len().div_ceil(cfg.batch).max(1) as f64
        ));
        bar.inc(1);
    }
    bar.finish();
    Ok(SasRecWeights {
        vs,
        model,
        n_items: n_items as i64,
    })
}

impl SasRecWeights {
    /// Scores of `candidates` after the item sequence `history`.
    pub fn score(&self, history: &[u32], candidates: &[u32]) -> Vec<f32> {
        let _g = tch::no_grad_guard();
        let seq =
            Tensor::from_slice(&padded(history, self.model.cfg.max_len as usize)).unsqueeze(0);
        let h = self.model.encode(&seq, false).select(1, -1).squeeze_dim(0);
        let ids: Vec<i64> = candidates.iter().map(|&c| c as i64 + 1).collect();
        let emb = self.model.item_emb.forward(&Tensor::from_slice(&ids));
        let s = emb.matmul(&h.unsqueeze(-1)).squeeze_dim(-1);
        Vec::<f32>::try_from(s).unwrap_or_default()
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        w.put(&format!("{prefix}/sasrec/n_items"), &[self.n_items])?;
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let shape: Vec<i64> = t.size();
            let data: Vec<f32> = Vec::try_from(t.detach().flatten(0, -1))?;
            w.put(&format!("{prefix}/sasrec/weights/{name}"), &data)?;
            w.put(&format!("{prefix}/sasrec/shapes/{name}"), &shape)?;
        }
        Ok(())
    }

    /// The weights `save` wrote under `prefix`, for a dataset of `expect_items` items.
    pub fn load(r: &Reader, prefix: &str, expect_items: usize) -> Result<Self> {
        lm::torch_env::init();
        let n_items = *r
            .get::<i64>(&format!("{prefix}/sasrec/n_items"))?
            .first()
            .with_context(|| {
                format!(
                    "{}: dataset /{prefix}/sasrec/n_items is empty",
                    r.path.display()
                )
            })?;
        if n_items != expect_items as i64 {
            bail!(
                "{}: dataset /{prefix}/sasrec/n_items = {n_items}, but the data has {expect_items} items",
                r.path.display()
            );
        }
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = SasRecModel::new(&vs.root(), n_items, SasRecConfig::default());
        for (name, mut t) in vs.variables() {
            let data: Vec<f32> = r.get(&format!("{prefix}/sasrec/weights/{name}"))?;
            let shape: Vec<i64> = r.get(&format!("{prefix}/sasrec/shapes/{name}"))?;
            if shape != t.size() || data.len() as i64 != t.numel() as i64 {
                bail!(
                    "{}: dataset /{prefix}/sasrec/weights/{name}: {} values of shape {shape:?}, \
                     expected shape {:?}",
                    r.path.display(),
                    data.len(),
                    t.size()
                );
            }
            super::finite(r, &format!("{prefix}/sasrec/weights/{name}"), &data)?;
            tch::no_grad(|| t.copy_(&Tensor::from_slice(&data).view(&shape[..])));
        }
        vs.freeze();
        Ok(Self { vs, model, n_items })
    }
}

/// A trained SASRec shared across threads.
pub struct SasRec(std::sync::Mutex<SasRecWeights>);

impl SasRec {
    pub fn new(w: SasRecWeights) -> Self {
        Self(std::sync::Mutex::new(w))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SasRecWeights> {
        // A panic while holding the lock cannot leave the weights half-written (scoring
        // only reads them), so a poisoned lock is still safe to use.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn score(&self, history: &[u32], candidates: &[u32]) -> Vec<f32> {
        self.lock().score(history, candidates)
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        self.lock().save(w, prefix)
    }
}
