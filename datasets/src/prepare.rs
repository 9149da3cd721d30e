//! Raw interactions -> the prepared dataset: dedupe, optional k-core, chronological
//! leave-one-out, sparse/dense evaluation subsets, seeded 1+9 candidate lists and episodes
//! (PROTOCOL.md, "Splits and subsets").

use crate::raw::{ItemMeta, RawDataset, UserMeta};
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PrepareConfig {
    pub dataset: String,
    pub seed: u64,
    /// Keep only users and items with at least this many interactions (0: off), iterated.
    pub k_core: usize,
    /// Users whose whole sequence is shorter are dropped (need training history + 2 targets).
    pub min_user_interactions: usize,
    pub subset_users: usize,
    pub candidates: usize,
    /// Training episodes per user, at the latest training positions.
    pub train_episodes_per_user: usize,
    /// A training episode needs at least this much history before its target.
    pub min_train_history: usize,
}

impl PrepareConfig {
    pub fn new(dataset: &str, seed: u64) -> Self {
        Self {
            dataset: dataset.to_string(),
            seed,
            k_core: if dataset.starts_with("amazon") { 5 } else { 0 },
            min_user_interactions: 5,
            subset_users: 100,
            candidates: 10,
            train_episodes_per_user: 3,
            min_train_history: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub item: u32,
    pub rating: f32,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub raw_id: String,
    pub meta: ItemMeta,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub raw_id: String,
    pub meta: UserMeta,
}

/// One ranking task: the user's history is `sequences[user][..pos]`, the target is
/// `sequences[user][pos].item`, found at `candidates[target_index]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub user: u32,
    pub pos: u32,
    pub candidates: Vec<u32>,
    pub target_index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Self::Train),
            "valid" => Ok(Self::Valid),
            "test" => Ok(Self::Test),
            o => bail!("split `{o}`: expected train, valid or test"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Valid => "valid",
            Self::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Sparse,
    Dense,
    All,
}

impl Subset {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sparse" => Ok(Self::Sparse),
            "dense" => Ok(Self::Dense),
            "all" => Ok(Self::All),
            o => bail!("subset `{o}`: expected sparse, dense or all"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeGraph {
    /// (item, relation index, entity index)
    pub facts: Vec<(u32, u32, u32)>,
    pub relations: Vec<String>,
    pub entities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub config: PrepareConfig,
    pub items: Vec<Item>,
    pub users: Vec<User>,
    /// Per user, chronological (ties broken by item raw id for determinism).
    pub sequences: Vec<Vec<Event>>,
    pub kg: KnowledgeGraph,
    pub train: Vec<Episode>,
    pub valid: Vec<Episode>,
    pub test: Vec<Episode>,
    pub sparse_users: Vec<u32>,
    pub dense_users: Vec<u32>,
}

impl Prepared {
    /// Length of a user's training history (everything before the validation target).
    pub fn train_len(&self, user: u32) -> usize {
        self.sequences[user as usize].len() - 2
    }

    pub fn episodes(&self, split: Split) -> &[Episode] {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    /// Evaluation or training episodes restricted to a subset's users.
    pub fn select(&self, split: Split, subset: Subset) -> Vec<&Episode> {
        let users: Option<HashSet<u32>> = match subset {
            Subset::All => None,
            Subset::Sparse => Some(self.sparse_users.iter().copied().collect()),
            Subset::Dense => Some(self.dense_users.iter().copied().collect()),
        };
        let mut eps: Vec<&Episode> = self
            .episodes(split)
            .iter()
            .filter(|e| users.as_ref().is_none_or(|u| u.contains(&e.user)))
            .collect();
        if let Some(order) = match subset {
            Subset::Sparse => Some(&self.sparse_users),
            Subset::Dense => Some(&self.dense_users),
            Subset::All => None,
        } {
            let rank: HashMap<u32, usize> =
                order.iter().enumerate().map(|(i, u)| (*u, i)).collect();
            eps.sort_by_key(|e| (rank[&e.user], e.pos));
        }
        eps
    }

    pub fn target(&self, e: &Episode) -> u32 {
        self.sequences[e.user as usize][e.pos as usize].item
    }

    pub fn history(&self, e: &Episode) -> &[Event] {
        &self.sequences[e.user as usize][..e.pos as usize]
    }

    /// The split an episode belongs to, from its position: the user's last event is the test
    /// target, the second-to-last the validation target, earlier ones training targets.
    pub fn split_of(&self, e: &Episode) -> Split {
        let n = self.sequences[e.user as usize].len();
        match n.saturating_sub(e.pos as usize + 1) {
            0 => Split::Test,
            1 => Split::Valid,
            _ => Split::Train,
        }
    }
}

pub fn prepare(raw: &RawDataset, config: &PrepareConfig) -> Result<Prepared> {
    if config.candidates < 2 {
        bail!("candidates must be at least 2");
    }
    // Dedupe (user, item): keep the latest interaction, as a re-rating replaces the old one.
    let mut latest: HashMap<(&str, &str), (f32, i64)> = HashMap::new();
    for it in &raw.interactions {
        let e = latest
            .entry((it.user.as_str(), it.item.as_str()))
            .or_insert((it.rating, it.timestamp));
        if it.timestamp >= e.1 {
            *e = (it.rating, it.timestamp);
        }
    }
    let mut inter: Vec<(&str, &str, f32, i64)> = latest
        .into_iter()
        .map(|((u, i), (r, t))| (u, i, r, t))
        .collect();
    // Iterated k-core over users and items.
    if config.k_core > 0 {
        loop {
            let mut uc: HashMap<&str, usize> = HashMap::new();
            let mut ic: HashMap<&str, usize> = HashMap::new();
            for (u, i, _, _) in &inter {
                *uc.entry(u).or_default() += 1;
                *ic.entry(i).or_default() += 1;
            }
            let before = inter.len();
            inter.retain(|(u, i, _, _)| uc[u] >= config.k_core && ic[i] >= config.k_core);
            if inter.len() == before {
                break;
            }
        }
    }
    let mut per_user: BTreeMap<&str, Vec<(&str, f32, i64)>> = BTreeMap::new();
    for (u, i, r, t) in inter {
        per_user.entry(u).or_default().push((i, r, t));
    }
    per_user.retain(|_, v| v.len() >= config.min_user_interactions.max(3));
    if per_user.is_empty() {
        bail!(
            "no user has {} or more interactions after filtering",
            config.min_user_interactions.max(3)
        );
    }
    // Stable ids: users and items sorted by raw id (numerically when all are numbers).
    let mut user_ids: Vec<&str> = per_user.keys().copied().collect();
    sort_ids(&mut user_ids);
    let mut item_ids: Vec<&str> = per_user
        .values()
        .flatten()
        .map(|(i, _, _)| *i)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    sort_ids(&mut item_ids);
    let item_index: HashMap<&str, u32> = item_ids
        .iter()
        .enumerate()
        .map(|(k, i)| (*i, k as u32))
        .collect();
    let items: Vec<Item> = item_ids
        .iter()
        .map(|id| Item {
            raw_id: id.to_string(),
            meta: raw.items.get(*id).cloned().unwrap_or_else(|| ItemMeta {
                title: format!("item {id}"),
                ..Default::default()
            }),
        })
        .collect();
    let users: Vec<User> = user_ids
        .iter()
        .map(|id| User {
            raw_id: id.to_string(),
            meta: raw.users.get(*id).cloned().unwrap_or_default(),
        })
        .collect();
    let sequences: Vec<Vec<Event>> = user_ids
        .iter()
        .map(|u| {
            let mut seq = per_user[u].clone();
            seq.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| cmp_ids(a.0, b.0)));
            seq.into_iter()
                .map(|(i, r, t)| Event {
                    item: item_index[i],
                    rating: r,
                    timestamp: t,
                })
                .collect()
        })
        .collect();
    let kg = build_kg(raw, &item_index);

    let mut rng = StdRng::seed_from_u64(config.seed);
    let n_items = items.len() as u32;
    let episode = |user: u32, pos: usize, rng: &mut StdRng| -> Result<Episode> {
        let seq = &sequences[user as usize];
        let seen: HashSet<u32> = seq.iter().map(|e| e.item).collect();
        let need = config.candidates - 1;
        if (n_items as usize) < seen.len() + need {
            bail!(
                "user {} has too few unseen items for {need} negatives",
                users[user as usize].raw_id
            );
        }
        let mut cands = vec![seq[pos].item];
        let mut chosen = HashSet::new();
        while cands.len() < config.candidates {
            let i = rng.random_range(0..n_items);
            if !seen.contains(&i) && chosen.insert(i) {
                cands.push(i);
            }
        }
        cands.shuffle(rng);
        let target_index = cands.iter().position(|&c| c == seq[pos].item).unwrap_or(0) as u32;
        Ok(Episode {
            user,
            pos: pos as u32,
            candidates: cands,
            target_index,
        })
    };
    let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..users.len() as u32 {
        let n = sequences[u as usize].len();
        test.push(episode(u, n - 1, &mut rng)?);
        valid.push(episode(u, n - 2, &mut rng)?);
        let first = config.min_train_history.max(1);
        for pos in (first..n - 2).rev().take(config.train_episodes_per_user) {
            train.push(episode(u, pos, &mut rng)?);
        }
    }
    // Sparse / dense: bottom and top thirds by training-history length, 100 drawn from each.
    let mut by_len: Vec<u32> = (0..users.len() as u32).collect();
    by_len.sort_by_key(|&u| (sequences[u as usize].len(), u));
    let third = by_len.len() / 3;
    let mut draw = |pool: &[u32]| {
        let mut pool = pool.to_vec();
        pool.shuffle(&mut rng);
        pool.truncate(config.subset_users);
        pool
    };
    let sparse_users = draw(&by_len[..third.max(1).min(by_len.len())]);
    let dense_users = draw(&by_len[by_len.len() - third.max(1).min(by_len.len())..]);
    Ok(Prepared {
        config: config.clone(),
        items,
        users,
        sequences,
        kg,
        train,
        valid,
        test,
        sparse_users,
        dense_users,
    })
}

fn build_kg(raw: &RawDataset, item_index: &HashMap<&str, u32>) -> KnowledgeGraph {
    let mut relations: Vec<String> = Vec::new();
    let mut entities: Vec<String> = Vec::new();
    let (mut rel_ix, mut ent_ix) = (HashMap::new(), HashMap::new());
    let mut facts = Vec::new();
    for f in &raw.kg {
        let Some(&item) = item_index.get(f.item.as_str()) else {
            continue;
        };
        let r = *rel_ix.entry(f.relation.clone()).or_insert_with(|| {
            relations.push(f.relation.clone());
            relations.len() as u32 - 1
        });
        let e = *ent_ix.entry(f.entity.clone()).or_insert_with(|| {
            entities.push(f.entity.clone());
            entities.len() as u32 - 1
        });
        facts.push((item, r, e));
    }
    facts.sort_unstable();
    facts.dedup();
    KnowledgeGraph {
        facts,
        relations,
        entities,
    }
}

/// Numeric ids in numeric order, then the others in text order (ties by text): a total
/// order. Comparing pairwise (numerically only when both were numbers) was not one when
/// numeric and other ids mixed ("9" < "10" < "1a" < "9"), and sorting panicked.
fn cmp_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| {
        let n = s.parse::<u64>().ok();
        (n.is_none(), n)
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

fn sort_ids(ids: &mut [&str]) {
    ids.sort_by(|a, b| cmp_ids(a, b));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: mixed numeric and other ids sort without a panic, numbers first.
    #[test]
    fn mixed_ids_sort_in_a_total_order() {
        let mut ids = vec!["1a", "10", "9", "B07", "007", "7", "a", "100"];
        for _ in 0..50 {
            sort_ids(&mut ids);
            ids.rotate_left(3);
        }
        sort_ids(&mut ids);
        assert_eq!(ids, ["007", "7", "9", "10", "100", "1a", "B07", "a"]);
        let many: Vec<String> = (0..200)
            .map(|i| {
                if i % 3 == 0 {
                    format!("{i}x")
                } else {
                    i.to_string()
                }
            })
            .collect();
        let mut refs: Vec<&str> = many.iter().map(String::as_str).collect();
        sort_ids(&mut refs);
        assert!(refs.windows(2).all(|w| cmp_ids(w[0], w[1]).is_le()));
    }
}
