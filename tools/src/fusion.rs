//! Evidence signals per candidate from the collaborative models, and their fusion.
//!
//! A `Signal` scores an episode's candidates from what the episode's knowledge horizon holds
//! (never its target). A `Preset` names a set of signals the agent can ask for
//! (`rank_candidates`); its weights are fit by listwise softmax regression, separately for
//! short, medium and long histories, so the fusion adapts to the user. The weights are fit on
//! training episodes seen through the training horizon (whose models never saw a training
//! target), cross-fit over two folds of users: an episode of a user in one fold is ranked
//! with the weights fit on the other fold. So no tool output depends on its own episode's
//! target, nor on any validation or test target (the leakage tests check every output).

use crate::world::{EpisodeView, World};
use datasets::Split;
use rayon::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// BPR-MF user-item score.
    Bpr,
    /// SASRec next-item score from the user's sequence.
    SasRec,
    /// Co-occurrence with the user's last five items.
    CoRecent,
    /// Co-occurrence with the whole history (item-kNN).
    CoHistory,
    /// Similarity-weighted count of the 20 most similar users who had the candidate.
    SimilarUsers,
    /// log(1 + interactions) in the knowledge horizon.
    Popularity,
    /// log(1 + interactions) in the two weeks up to the user's last known interaction: what
    /// was being watched at the time (other users' past only, never the future).
    Trending,
    /// EASE item-item score of the whole history (`models::ease`).
    Ease,
    /// What other users watched within ten items after the user's last ten
    /// (`models::transitions`).
    Transitions,
}

/// The window of `Signal::Trending`.
pub const TRENDING_WINDOW_S: i64 = 14 * 24 * 3600;

impl Signal {
    pub const ALL: [Signal; 9] = [
        Self::Bpr,
        Self::SasRec,
        Self::CoRecent,
        Self::CoHistory,
        Self::SimilarUsers,
        Self::Popularity,
        Self::Trending,
        Self::Ease,
        Self::Transitions,
    ];

    /// Short label used in observations.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bpr => "bpr",
            Self::SasRec => "sasrec",
            Self::CoRecent => "recent",
            Self::CoHistory => "history",
            Self::SimilarUsers => "similar",
            Self::Popularity => "pop",
            Self::Trending => "trending",
            Self::Ease => "ease",
            Self::Transitions => "next",
        }
    }

    /// Raw scores of the episode's candidates (higher: stronger evidence).
    pub fn scores(self, ep: &EpisodeView) -> Vec<f64> {
        let k = ep.knowledge;
        let cands = ep.candidates;
        let raw: Vec<f64> = match self {
            Self::Bpr => cands
                .iter()
                .map(|&c| k.models.bpr.score(ep.user, c) as f64)
                .collect(),
            Self::SasRec => {
                let items: Vec<u32> = ep.history.iter().map(|e| e.item).collect();
                k.models
                    .sasrec
                    .score(&items, cands)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
            Self::CoRecent | Self::CoHistory => {
                let take = if self == Self::CoRecent {
                    5
                } else {
                    ep.history.len()
                };
                let recent: Vec<u32> = ep.history.iter().rev().take(take).map(|e| e.item).collect();
                cands
                    .iter()
                    .map(|&c| recent.iter().map(|&h| k.models.cooc.sim(h, c) as f64).sum())
                    .collect()
            }
            Self::SimilarUsers => {
                let mut s = vec![0.0; cands.len()];
                for (v, sim) in k.models.userknn.neighbors.of(ep.user).take(20) {
                    for e in &k.sequences[v as usize] {
                        if let Some(i) = cands.iter().position(|&c| c == e.item) {
                            s[i] += sim as f64;
                        }
                    }
                }
                s
            }
            Self::Popularity => cands
                .iter()
                .map(|&c| (1.0 + k.item_stats[c as usize].count as f64).ln())
                .collect(),
            Self::Trending => match ep.history.last() {
                Some(last) => cands
                    .iter()
                    .map(|&c| {
                        let n = k.interactions_before(c, last.timestamp, TRENDING_WINDOW_S);
                        (1.0 + n as f64).ln()
                    })
                    .collect(),
                None => vec![0.0; cands.len()],
            },
            Self::Ease => {
                let items: Vec<u32> = ep.history.iter().map(|e| e.item).collect();
                k.ease()
                    .score(&items, cands)
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
            Self::Transitions => {
                let items: Vec<u32> = ep.history.iter().map(|e| e.item).collect();
                k.transitions().score(&items, cands)
            }
        };
        raw.into_iter()
            .map(|x| if x.is_finite() { x } else { 0.0 })
            .collect()
    }
}

/// The signal sets the agent can ask `rank_candidates` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Every signal, fused.
    All,
    /// What users with similar taste liked: BPR, similar users and EASE.
    Collaborative,
    /// What follows the user's recent items: SASRec, co-occurrence with the last five and
    /// transitions from the last ten.
    Sequential,
    /// What is widely watched: popularity and co-occurrence with the whole history.
    Popular,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Self::All,
        Self::Collaborative,
        Self::Sequential,
        Self::Popular,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Collaborative => "collaborative",
            Self::Sequential => "sequential",
            Self::Popular => "popular",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    pub fn signals(self) -> &'static [Signal] {
        match self {
            Self::All => &Signal::ALL,
            Self::Collaborative => &[Signal::Bpr, Signal::SimilarUsers, Signal::Ease],
            Self::Sequential => &[Signal::SasRec, Signal::CoRecent, Signal::Transitions],
            Self::Popular => &[Signal::Popularity, Signal::Trending, Signal::CoHistory],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::All => "all collaborative evidence fused",
            Self::Collaborative => {
                "what users with similar taste liked (BPR, similar users, EASE)"
            }
            Self::Sequential => {
                "what tends to follow the user's recent items (SASRec, co-watched with the last five, watched next after the last ten)"
            }
            Self::Popular => {
                "what is widely watched, watched at the time, and co-watched with the user's whole history"
            }
        }
    }
}

/// History-length buckets with their own weights: short, medium, long.
pub const BUCKETS: usize = 3;

/// Fused scores of one episode's candidates, with the per-signal z-scores behind them.
pub struct Fused {
    pub signals: Vec<Signal>,
    /// `z[s][c]`: signal s of candidate c, z-scored over the candidates.
    pub z: Vec<Vec<f64>>,
    pub scores: Vec<f64>,
}

impl Fused {
    /// Candidate indices (0-based), strongest first; ties keep candidate order.
    pub fn order(&self) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.scores.len()).collect();
        o.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]).then(a.cmp(&b)));
        o
    }
}

/// z-scores over the candidates (0 when all equal).
pub fn zscore(v: &[f64]) -> Vec<f64> {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    v.iter()
        .map(|x| if sd < 1e-12 { 0.0 } else { (x - mean) / sd })
        .collect()
}

/// Weights per (preset, history bucket), fit once on the training episodes.
pub struct FittedFusion {
    /// Upper history lengths of the short and medium buckets (tertiles of the training
    /// episodes' history lengths).
    pub bounds: [usize; 2],
    /// Weights per (fold fit on, preset, bucket).
    weights: HashMap<(usize, Preset, usize), Vec<f64>>,
}

/// Users fall in two folds (by id parity) for cross-fitting.
pub fn fold_of(user: u32) -> usize {
    (user % 2) as usize
}

/// Which preset to ask for per history bucket, chosen by NDCG@10 on the validation episodes
/// (model selection). The teacher and the `fusion:adaptive` baseline use it; the tool itself
/// never does, so no tool output depends on a validation target.
pub struct PresetChoice {
    pub choice: [Preset; BUCKETS],
    /// Each (preset, bucket)'s mean NDCG@10 on validation.
    pub validation_ndcg: HashMap<(Preset, usize), f64>,
}

impl FittedFusion {
    /// Computes every signal once per training episode (through the training horizon) and
    /// fits each preset's weights per bucket on each fold of users.
    pub fn fit(w: &World) -> Self {
        let train = w.data.episodes(Split::Train);
        let mut lengths: Vec<usize> = train.iter().map(|e| w.data.history(e).len()).collect();
        lengths.sort_unstable();
        let at = |q: f64| {
            let i = ((lengths.len() as f64 * q) as usize).min(lengths.len().saturating_sub(1));
            lengths.get(i).copied().unwrap_or(0)
        };
        let bounds = [at(1.0 / 3.0), at(2.0 / 3.0)];
        // (fold, bucket, z[signal][candidate] for Signal::ALL, target)
        let rows: Vec<(usize, usize, Vec<Vec<f64>>, usize)> = train
            .par_iter()
            .map(|e| {
                let view = EpisodeView::new(w, e);
                let z = Signal::ALL
                    .iter()
                    .map(|s| zscore(&s.scores(&view)))
                    .collect();
                let b = bucket_of(bounds, view.history.len());
                (fold_of(e.user), b, z, e.target_index as usize)
            })
            .collect();
        let mut weights = HashMap::new();
        for fold in 0..2 {
            for preset in Preset::ALL {
                let idx: Vec<usize> = preset
                    .signals()
                    .iter()
                    .map(|s| Signal::ALL.iter().position(|a| a == s).unwrap_or(0))
                    .collect();
                for b in 0..BUCKETS {
                    let feats: Vec<(Vec<Vec<f64>>, usize)> = rows
                        .iter()
                        .filter(|(f, rb, _, _)| *f == fold && *rb == b)
                        .map(|(_, _, z, t)| (idx.iter().map(|&i| z[i].clone()).collect(), *t))
                        .collect();
                    weights.insert((fold, preset, b), fit_softmax(&feats, idx.len()));
                }
            }
        }
        Self { bounds, weights }
    }

    /// Picks each bucket's preset by NDCG@10 on the validation episodes (ties: `All`).
    pub fn choose_on_validation(&self, w: &World) -> PresetChoice {
        let mut out = PresetChoice {
            choice: [Preset::All; BUCKETS],
            validation_ndcg: HashMap::new(),
        };
        let valid = w.data.episodes(Split::Valid);
        let per_episode: Vec<(usize, Vec<f64>)> = valid
            .par_iter()
            .map(|e| {
                let view = EpisodeView::new(w, e);
                let t = e.target_index as usize;
                let ndcg = Preset::ALL
                    .iter()
                    .map(|&p| {
                        let s = self.fuse(&view, p).scores;
                        let rank = 1 + (0..s.len()).filter(|&i| i != t && s[i] > s[t]).count();
                        1.0 / (1.0 + rank as f64).log2()
                    })
                    .collect();
                (self.bucket(view.history.len()), ndcg)
            })
            .collect();
        for b in 0..BUCKETS {
            let rows: Vec<&Vec<f64>> = per_episode
                .iter()
                .filter(|(rb, _)| *rb == b)
                .map(|(_, n)| n)
                .collect();
            let n = rows.len().max(1) as f64;
            for (i, &p) in Preset::ALL.iter().enumerate() {
                let mean = rows.iter().map(|r| r[i]).sum::<f64>() / n;
                out.validation_ndcg.insert((p, b), mean);
            }
            out.choice[b] = Preset::ALL.into_iter().fold(Preset::All, |best, p| {
                if out.validation_ndcg[&(p, b)] > out.validation_ndcg[&(best, b)] + 1e-12 {
                    p
                } else {
                    best
                }
            });
        }
        out
    }

    pub fn bucket(&self, history_len: usize) -> usize {
        bucket_of(self.bounds, history_len)
    }

    /// The weights an episode of `user` uses: those fit on the other fold.
    pub fn weights(&self, user: u32, preset: Preset, bucket: usize) -> &[f64] {
        self.weights
            .get(&(1 - fold_of(user), preset, bucket))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The preset's fused scores for one episode.
    pub fn fuse(&self, ep: &EpisodeView, preset: Preset) -> Fused {
        let signals = preset.signals().to_vec();
        let z: Vec<Vec<f64>> = signals.iter().map(|s| zscore(&s.scores(ep))).collect();
        let wts = self.weights(ep.user, preset, self.bucket(ep.history.len()));
        let scores = (0..ep.candidates.len())
            .map(|c| z.iter().zip(wts).map(|(zs, wt)| zs[c] * wt).sum())
            .collect();
        Fused { signals, z, scores }
    }
}

fn bucket_of(bounds: [usize; 2], len: usize) -> usize {
    if len <= bounds[0] {
        0
    } else if len <= bounds[1] {
        1
    } else {
        2
    }
}

/// Listwise softmax regression: maximizes the mean log-probability of the target among its
/// episode's candidates under softmax(features . w), with a small L2 penalty; plain gradient
/// ascent from zero (deterministic). `feats[e] = (z[signal][candidate], target)`.
pub fn fit_softmax(feats: &[(Vec<Vec<f64>>, usize)], dims: usize) -> Vec<f64> {
    let mut w = vec![0.0; dims];
    if feats.is_empty() {
        return vec![1.0; dims];
    }
    let (lr, l2) = (0.5, 1e-3);
    for _ in 0..300 {
        let mut grad = vec![0.0; dims];
        for (z, t) in feats {
            let n = z.first().map_or(0, Vec::len);
            let s: Vec<f64> = (0..n)
                .map(|c| (0..dims).map(|d| z[d][c] * w[d]).sum())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..dims {
                let expect: f64 = (0..n).map(|c| e[c] / sum * z[d][c]).sum();
                grad[d] += z[d][*t] - expect;
            }
        }
        for d in 0..dims {
            w[d] += lr * (grad[d] / feats.len() as f64 - l2 * w[d]);
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_fit_finds_the_informative_signal() {
        // Signal 0 always puts the target first; signal 1 is noise.
        let feats: Vec<(Vec<Vec<f64>>, usize)> = (0..50)
            .map(|i| {
                let t = i % 4;
                let s0: Vec<f64> = (0..4).map(|c| if c == t { 1.0 } else { 0.0 }).collect();
                let s1: Vec<f64> = (0..4).map(|c| ((c * 7 + i) % 5) as f64).collect();
                (vec![zscore(&s0), zscore(&s1)], t)
            })
            .collect();
        let w = fit_softmax(&feats, 2);
        assert!(w[0] > 1.0 && w[0] > 5.0 * w[1].abs(), "{w:?}");
    }
}
