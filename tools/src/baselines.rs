//! The classical recommenders the agent must beat, scoring an episode's candidates.

use crate::fusion::{Preset, Signal};
use crate::world::{EpisodeView, World};
use anyhow::{bail, Context, Result};
use datasets::Episode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Random,
    Pop,
    ItemKnn,
    Bpr,
    SasRec,
    /// EASE (`models::ease`), fit on the horizon's sequences.
    Ease,
    /// Item-to-item transitions from the user's last items (`models::transitions`).
    Transitions,
    /// The collaborative evidence fused as `rank_candidates` does (`fusion.rs`; weights fit
    /// on training episodes): the ranking an agent gets by copying that tool.
    Fusion(Preset),
    /// Per user, the preset validation chose for their history length: what the scripted
    /// teacher answers.
    FusionAdaptive,
}

impl Method {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "random" => Self::Random,
            "pop" => Self::Pop,
            "itemknn" => Self::ItemKnn,
            "bpr" => Self::Bpr,
            "sasrec" => Self::SasRec,
            "ease" => Self::Ease,
            "transitions" => Self::Transitions,
            "fusion:adaptive" => Self::FusionAdaptive,
            o => match o.strip_prefix("fusion").map(|p| p.trim_start_matches(':')) {
                Some("") => Self::Fusion(Preset::All),
                Some(p) => Self::Fusion(Preset::parse(p).with_context(|| {
                    format!("--method `{o}`: expected fusion:all|collaborative|sequential|popular|adaptive")
                })?),
                None => bail!(
                    "--method `{o}`: expected random, pop, itemknn, bpr, sasrec, ease, transitions or fusion[:preset]"
                ),
            },
        })
    }
    pub const ALL: [Method; 7] = [
        Self::Random,
        Self::Pop,
        Self::ItemKnn,
        Self::Bpr,
        Self::SasRec,
        Self::Ease,
        Self::Transitions,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Pop => "pop",
            Self::ItemKnn => "itemknn",
            Self::Bpr => "bpr",
            Self::SasRec => "sasrec",
            Self::Ease => "ease",
            Self::Transitions => "transitions",
            Self::Fusion(Preset::All) => "fusion",
            Self::Fusion(Preset::Collaborative) => "fusion:collaborative",
            Self::Fusion(Preset::Sequential) => "fusion:sequential",
            Self::Fusion(Preset::Popular) => "fusion:popular",
            Self::FusionAdaptive => "fusion:adaptive",
        }
    }
}

/// Scores for each candidate (higher is better), from what the episode's horizon knows.
pub fn scores(w: &World, e: &Episode, method: Method, rng: &mut StdRng) -> Vec<f64> {
    let ep = EpisodeView::new(w, e);
    let (history, k) = (ep.history, ep.knowledge);
    match method {
        Method::Random => e.candidates.iter().map(|_| rng.random::<f64>()).collect(),
        Method::Pop => e
            .candidates
            .iter()
            .map(|&c| k.item_stats[c as usize].count as f64)
            .collect(),
        Method::ItemKnn => e
            .candidates
            .iter()
            .map(|&c| {
                history
                    .iter()
                    .map(|h| k.models.cooc.sim(h.item, c) as f64)
                    .sum()
            })
            .collect(),
        Method::Bpr => e
            .candidates
            .iter()
            .map(|&c| k.models.bpr.score(e.user, c) as f64)
            .collect(),
        Method::SasRec => {
            let items: Vec<u32> = history.iter().map(|h| h.item).collect();
            k.models
                .sasrec
                .score(&items, &e.candidates)
                .into_iter()
                .map(f64::from)
                .collect()
        }
        // The same scores `rank_candidates` fuses (`fusion::Signal`).
        Method::Ease => Signal::Ease.scores(&ep),
        Method::Transitions => Signal::Transitions.scores(&ep),
        Method::Fusion(p) => w.fusion().fuse(&ep, p).scores,
        Method::FusionAdaptive => w.fusion().fuse(&ep, w.preset_for(ep.history.len())).scores,
    }
}

/// The target's 1-based rank under `method`, ties broken at random (seeded).
pub fn target_rank(w: &World, e: &Episode, method: Method, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ ((e.user as u64) << 20) ^ e.pos as u64);
    let s = scores(w, e, method, &mut rng);
    let jitter: Vec<f64> = s.iter().map(|_| rng.random::<f64>()).collect();
    let t = e.target_index as usize;
    1 + (0..s.len())
        .filter(|&i| i != t && (s[i] > s[t] || (s[i] == s[t] && jitter[i] > jitter[t])))
        .count()
}
