//! What the tools know: the prepared dataset seen through one of two knowledge horizons
//! (PROTOCOL.md leakage rule), plus the collaborative models trained on that horizon.
//!
//! - `Horizon::Eval`: each user's sequence minus the validation and test targets (the
//!   training split). Validation and test episodes see this.
//! - `Horizon::Train`: each user's sequence cut before their earliest training-episode
//!   position, so no training target (nor anything after it) is known. Training episodes
//!   (synthesis, SFT, GRPO) see this, so their evidence is no better than at test time.
//!
//! Item metadata, the knowledge graph and titles do not depend on interactions and live on
//! `World` itself.

use crate::fusion::{FittedFusion, PresetChoice};
use crate::models::ease::{self, Ease};
use crate::models::transitions::Transitions;
use crate::models::{CfModels, TrainOptions};
use datasets::{Episode, Event, Prepared, Split};
use std::collections::HashMap;

/// Per-item statistics from the sequences of one horizon.
#[derive(Debug, Clone, Default)]
pub struct ItemStats {
    pub count: u32,
    pub rating_sum: f64,
}

impl ItemStats {
    pub fn mean_rating(&self) -> Option<f64> {
        (self.count > 0).then(|| self.rating_sum / self.count as f64)
    }
}

/// How far into each user's sequence the tools may look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// Everything before the validation target: for validation and test episodes.
    Eval,
    /// Everything before the user's earliest training-episode target: for training episodes.
    Train,
}

impl Horizon {
    pub const ALL: [Horizon; 2] = [Horizon::Eval, Horizon::Train];

    /// The horizon an episode of `split` sees.
    pub fn of(split: Split) -> Self {
        match split {
            Split::Train => Self::Train,
            Split::Valid | Split::Test => Self::Eval,
        }
    }

    /// The HDF5 group its models are stored under.
    pub fn group(self) -> &'static str {
        match self {
            Self::Eval => "models",
            Self::Train => "models_train",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Eval => "eval",
            Self::Train => "train",
        }
    }
}

/// Where each user's known sequence ends (exclusive) under `horizon`.
pub fn horizon_cuts(data: &Prepared, horizon: Horizon) -> Vec<usize> {
    let mut cut: Vec<usize> = data
        .sequences
        .iter()
        .map(|s| s.len().saturating_sub(2))
        .collect();
    if horizon == Horizon::Train {
        for e in &data.train {
            let c = &mut cut[e.user as usize];
            *c = (*c).min(e.pos as usize);
        }
    }
    cut
}

/// Each user's sequence as `horizon` knows it: what its models are trained on.
pub fn horizon_sequences(data: &Prepared, horizon: Horizon) -> Vec<Vec<Event>> {
    data.sequences
        .iter()
        .zip(horizon_cuts(data, horizon))
        .map(|(s, cut)| s[..cut].to_vec())
        .collect()
}

/// What the tools know under one horizon: the sequences, per-item statistics and the
/// collaborative models trained on exactly those sequences.
pub struct Knowledge {
    pub horizon: Horizon,
    /// Each user's known sequence (`horizon_sequences`).
    pub sequences: Vec<Vec<Event>>,
    pub item_stats: Vec<ItemStats>,
    /// Each item's interaction times in `sequences`, sorted (for "trending" evidence).
    pub item_times: Vec<Vec<i64>>,
    pub models: CfModels,
    /// EASE on `sequences`, fit on first use (closed form, not stored: `models::ease`).
    ease: std::sync::OnceLock<Ease>,
    /// Item-to-item transitions on `sequences`, counted on first use (`models::transitions`).
    transitions: std::sync::OnceLock<Transitions>,
}

impl Knowledge {
    /// How many interactions `item` had in the `window` seconds up to `until` (inclusive).
    pub fn interactions_before(&self, item: u32, until: i64, window: i64) -> usize {
        let t = &self.item_times[item as usize];
        t.partition_point(|&x| x <= until) - t.partition_point(|&x| x < until - window)
    }

    /// `models` must have been trained on `horizon_sequences(data, horizon)`.
    pub fn new(data: &Prepared, horizon: Horizon, models: CfModels) -> Self {
        let sequences = horizon_sequences(data, horizon);
        let mut item_stats = vec![ItemStats::default(); data.items.len()];
        let mut item_times = vec![Vec::new(); data.items.len()];
        for e in sequences.iter().flatten() {
            let s = &mut item_stats[e.item as usize];
            s.count += 1;
            s.rating_sum += e.rating as f64;
            item_times[e.item as usize].push(e.timestamp);
        }
        item_times.iter_mut().for_each(|t| t.sort_unstable());
        Self {
            horizon,
            sequences,
            item_stats,
            item_times,
            models,
            ease: std::sync::OnceLock::new(),
            transitions: std::sync::OnceLock::new(),
        }
    }

    /// What follows what in this horizon's sequences, counted the first time it is asked for.
    pub fn transitions(&self) -> &Transitions {
        self.transitions
            .get_or_init(|| Transitions::train(&self.sequences, self.item_stats.len()))
    }

    /// EASE fit on this horizon's sequences the first time it is asked for (~0.5 s on
    /// ML-100k), then shared. A fit that fails (it cannot on a prepared store: the matrix
    /// is positive definite) leaves every EASE score 0 and says so on stderr.
    pub fn ease(&self) -> &Ease {
        self.ease.get_or_init(|| {
            let n = self.item_stats.len();
            Ease::train(&self.sequences, n, ease::LAMBDA).unwrap_or_else(|e| {
                eprintln!(
                    "warning: {e:#}; EASE scores are 0 for the {} horizon",
                    self.horizon.name()
                );
                Ease {
                    n_items: n,
                    b: vec![0.0; n * n],
                }
            })
        })
    }
}

pub struct World {
    pub data: Prepared,
    /// What validation and test episodes' tools know (the training split).
    pub eval: Knowledge,
    /// What training episodes' tools know (cut before each user's first training target).
    pub train: Knowledge,
    /// item -> [(relation, entity)] from the knowledge graph.
    pub kg_by_item: Vec<Vec<(u32, u32)>>,
    /// (relation, entity) -> items.
    pub kg_by_entity: HashMap<(u32, u32), Vec<u32>>,
    /// Amazon relations resolved to item indices.
    pub also_buy: Vec<Vec<u32>>,
    pub also_view: Vec<Vec<u32>>,
    pub item_by_raw_id: HashMap<String, u32>,
    /// The fused evidence behind `rank_candidates`, fit on first use (`fusion.rs`).
    fusion: std::sync::OnceLock<FittedFusion>,
    preset_choice: std::sync::OnceLock<PresetChoice>,
}

impl World {
    /// The collaborative evidence fusion, fit on the training episodes the first time it is
    /// asked for (a few seconds on ML-100k), then shared.
    pub fn fusion(&self) -> &FittedFusion {
        self.fusion.get_or_init(|| FittedFusion::fit(self))
    }

    /// The evidence preset to ask for, per user: chosen on validation episodes by history
    /// length (for the teacher and the `fusion:adaptive` baseline, never for a tool).
    pub fn preset_for(&self, history_len: usize) -> crate::fusion::Preset {
        let c = self
            .preset_choice
            .get_or_init(|| self.fusion().choose_on_validation(self));
        c.choice[self.fusion().bucket(history_len)]
    }

    /// `eval_models` trained on `horizon_sequences(&data, Horizon::Eval)`, `train_models` on
    /// `horizon_sequences(&data, Horizon::Train)` (`World::train` does both).
    pub fn new(data: Prepared, eval_models: CfModels, train_models: CfModels) -> Self {
        let eval = Knowledge::new(&data, Horizon::Eval, eval_models);
        let train = Knowledge::new(&data, Horizon::Train, train_models);
        let mut kg_by_item = vec![Vec::new(); data.items.len()];
        let mut kg_by_entity: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
        for &(item, rel, ent) in &data.kg.facts {
            kg_by_item[item as usize].push((rel, ent));
            kg_by_entity.entry((rel, ent)).or_default().push(item);
        }
        let item_by_raw_id: HashMap<String, u32> = data
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.raw_id.clone(), i as u32))
            .collect();
        let resolve = |ids: &[String]| {
            ids.iter()
                .filter_map(|r| item_by_raw_id.get(r).copied())
                .collect::<Vec<u32>>()
        };
        let also_buy = data
            .items
            .iter()
            .map(|it| resolve(&it.meta.also_buy))
            .collect();
        let also_view = data
            .items
            .iter()
            .map(|it| resolve(&it.meta.also_view))
            .collect();
        Self {
            data,
            eval,
            train,
            kg_by_item,
            kg_by_entity,
            also_buy,
            also_view,
            item_by_raw_id,
            fusion: std::sync::OnceLock::new(),
            preset_choice: std::sync::OnceLock::new(),
        }
    }

    /// Trains both horizons' models with the same options and builds the world.
    pub fn train(data: Prepared, opts: &TrainOptions) -> anyhow::Result<Self> {
        let [eval, train] =
            Horizon::ALL.map(|h| CfModels::train(&data, &horizon_sequences(&data, h), opts));
        Ok(Self::new(data, eval?, train?))
    }

    pub fn knowledge(&self, horizon: Horizon) -> &Knowledge {
        match horizon {
            Horizon::Eval => &self.eval,
            Horizon::Train => &self.train,
        }
    }

    /// What an episode's tools know: `train` for training episodes, `eval` otherwise.
    pub fn knowledge_for(&self, e: &Episode) -> &Knowledge {
        self.knowledge(Horizon::of(self.data.split_of(e)))
    }

    /// "Title (year) [Genre, Genre]" with at most `max_categories` categories.
    pub fn item_line(&self, item: u32, max_categories: usize) -> String {
        let m = &self.data.items[item as usize].meta;
        let mut s = self.title(item);
        if !m.categories.is_empty() {
            s.push_str(&format!(
                " [{}]",
                m.categories
                    .iter()
                    .take(max_categories)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    }

    pub fn title(&self, item: u32) -> String {
        let m = &self.data.items[item as usize].meta;
        match m.year {
            Some(y) => format!("{} ({y})", m.title),
            None => m.title.clone(),
        }
    }
}

/// One episode as the tools see it: who, what came before the target, which candidates,
/// and what the tools know (the horizon of the episode's split).
pub struct EpisodeView<'a> {
    pub user: u32,
    pub split: Split,
    pub history: &'a [Event],
    pub candidates: &'a [u32],
    pub knowledge: &'a Knowledge,
}

impl<'a> EpisodeView<'a> {
    pub fn new(world: &'a World, e: &'a Episode) -> Self {
        Self {
            user: e.user,
            split: world.data.split_of(e),
            history: world.data.history(e),
            candidates: &e.candidates,
            knowledge: world.knowledge_for(e),
        }
    }
}

/// Writes `w` as `data prepare` does: the prepared data and both horizons' models, in one
/// HDF5 file that appears only when complete (`Writer`). `load` reads it back.
pub fn save(w: &World, path: &std::path::Path) -> anyhow::Result<()> {
    let writer = datasets::store::Writer::create(path)?;
    datasets::store::write_prepared(&writer, &w.data)?;
    for h in Horizon::ALL {
        w.knowledge(h).models.save(&writer, h.group())?;
    }
    writer.finish()
}

/// Opens a prepared HDF5 file with both horizons' stored models.
pub fn load(path: &std::path::Path) -> anyhow::Result<World> {
    let r = datasets::store::Reader::open(path)?;
    let data = datasets::store::read_prepared(&r)?;
    let [eval, train] = Horizon::ALL.map(|h| {
        let group = h.group();
        if !r.has(&format!("{group}/bpr/dim")) {
            anyhow::bail!(
                "{}: has no trained {} models (/{group}); run `recthinker data prepare` again",
                path.display(),
                h.name()
            );
        }
        CfModels::load(&r, group, data.users.len(), data.items.len())
    });
    Ok(World::new(data, eval?, train?))
}
