//! Item co-occurrence: how often two items appear in the same user's training history,
//! normalized to cosine similarity; the top neighbours of each item are kept.

use super::{top_k, Neighbors};
use anyhow::Result;
use datasets::store::{Reader, Writer};
use datasets::Event;
use rayon::prelude::*;

pub const KEEP: usize = 100;

pub struct CoOccurrence {
    /// Cosine similarity neighbours; `counts` holds the raw co-occurrence counts alongside.
    pub sims: Neighbors,
    pub counts: Neighbors,
}

impl CoOccurrence {
    pub fn train(train: &[Vec<Event>], n_items: usize) -> Self {
        let mut users_of: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        for (u, seq) in train.iter().enumerate() {
            for e in seq {
                users_of[e.item as usize].push(u as u32);
            }
        }
        type Row = Vec<(u32, f32)>;
        let rows: Vec<(Row, Row)> = (0..n_items)
            .into_par_iter()
            .map(|i| {
                let mut counts = vec![0u32; n_items];
                for &u in &users_of[i] {
                    for e in &train[u as usize] {
                        if e.item as usize != i {
                            counts[e.item as usize] += 1;
                        }
                    }
                }
                let ni = users_of[i].len() as f32;
                let sims: Vec<(u32, f32)> = counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(j, &c)| (j as u32, c as f32 / (ni * users_of[j].len() as f32).sqrt()))
                    .collect();
                let kept = top_k(sims, KEEP);
                let raw = kept
                    .iter()
                    .map(|&(j, _)| (j, counts[j as usize] as f32))
                    .collect();
                (kept, raw)
            })
            .collect();
        let (s, c): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        Self {
            sims: Neighbors::from_rows(s),
            counts: Neighbors::from_rows(c),
        }
    }

    pub fn sim(&self, a: u32, b: u32) -> f32 {
        self.sims
            .of(a)
            .find(|&(j, _)| j == b)
            .map_or(0.0, |(_, s)| s)
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        self.sims.save(w, &format!("{prefix}/cooc/sims"))?;
        self.counts.save(w, &format!("{prefix}/cooc/counts"))
    }

    pub fn load(r: &Reader, prefix: &str) -> Result<Self> {
        Ok(Self {
            sims: Neighbors::load(r, &format!("{prefix}/cooc/sims"))?,
            counts: Neighbors::load(r, &format!("{prefix}/cooc/counts"))?,
        })
    }
}
