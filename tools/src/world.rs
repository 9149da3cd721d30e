//! What the tools know: the prepared dataset seen through the training split only
//! (PROTOCOL.md leakage rule), plus the collaborative models trained on that split.

use crate::models::CfModels;
use datasets::{Episode, Event, Prepared};
use std::collections::HashMap;

/// Per-item statistics from the training split.
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

pub struct World {
    pub data: Prepared,
    /// Each user's training history: the sequence minus the validation and test targets.
    pub train_sequences: Vec<Vec<Event>>,
    pub item_stats: Vec<ItemStats>,
    /// item -> [(relation, entity)] from the knowledge graph.
    pub kg_by_item: Vec<Vec<(u32, u32)>>,
    /// (relation, entity) -> items.
    pub kg_by_entity: HashMap<(u32, u32), Vec<u32>>,
    pub models: CfModels,
    /// Amazon relations resolved to item indices.
    pub also_buy: Vec<Vec<u32>>,
    pub also_view: Vec<Vec<u32>>,
    pub item_by_raw_id: HashMap<String, u32>,
}

/// Each user's training history: everything before the validation target.
pub fn train_sequences(data: &Prepared) -> Vec<Vec<Event>> {
    data.sequences
        .iter()
        .map(|s| s[..s.len().saturating_sub(2)].to_vec())
        .collect()
}

impl World {
    pub fn new(data: Prepared, models: CfModels) -> Self {
        let train_sequences = train_sequences(&data);
        let mut item_stats = vec![ItemStats::default(); data.items.len()];
        for e in train_sequences.iter().flatten() {
            let s = &mut item_stats[e.item as usize];
            s.count += 1;
            s.rating_sum += e.rating as f64;
        }
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
            train_sequences,
            item_stats,
            kg_by_item,
            kg_by_entity,
            models,
            also_buy,
            also_view,
            item_by_raw_id,
        }
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

/// One episode as the tools see it: who, what came before the target, which candidates.
pub struct EpisodeView<'a> {
    pub user: u32,
    pub history: &'a [Event],
    pub candidates: &'a [u32],
}

impl<'a> EpisodeView<'a> {
    pub fn new(world: &'a World, e: &'a Episode) -> Self {
        Self {
            user: e.user,
            history: world.data.history(e),
            candidates: &e.candidates,
        }
    }
}

/// Opens a prepared HDF5 file with its stored models.
pub fn load(path: &std::path::Path) -> anyhow::Result<World> {
    let r = datasets::store::Reader::open(path)?;
    let data = datasets::store::read_prepared(&r)?;
    if !r.has("models/bpr/dim") {
        anyhow::bail!(
            "{}: has no trained models (/models); run `recthinker data prepare` again",
            path.display()
        );
    }
    let models = CfModels::load(&r)?;
    Ok(World::new(data, models))
}
