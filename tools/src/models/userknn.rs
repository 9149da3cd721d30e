//! User-user similarity: cosine over training-history item sets; top neighbours per user.

use super::{top_k, Neighbors};
use anyhow::Result;
use datasets::store::{Reader, Writer};
use datasets::Event;
use rayon::prelude::*;

pub const KEEP: usize = 50;

pub struct UserKnn {
    pub neighbors: Neighbors,
}

impl UserKnn {
    pub fn train(train: &[Vec<Event>], n_items: usize) -> Self {
        let mut users_of: Vec<Vec<u32>> = vec![Vec::new(); n_items];
        for (u, seq) in train.iter().enumerate() {
            for e in seq {
                users_of[e.item as usize].push(u as u32);
            }
        }
        let n_users = train.len();
        let rows: Vec<Vec<(u32, f32)>> = (0..n_users)
            .into_par_iter()
            .map(|u| {
                let mut overlap = vec![0u32; n_users];
                for e in &train[u] {
                    for &v in &users_of[e.item as usize] {
                        overlap[v as usize] += 1;
                    }
                }
                let nu = train[u].len() as f32;
                let sims = overlap
                    .iter()
                    .enumerate()
                    .filter(|&(v, &c)| v != u && c > 0)
                    .map(|(v, &c)| (v as u32, c as f32 / (nu * train[v].len() as f32).sqrt()))
                    .collect();
                top_k(sims, KEEP)
            })
            .collect();
        Self {
            neighbors: Neighbors::from_rows(rows),
        }
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        self.neighbors.save(w, &format!("{prefix}/userknn"))
    }

    pub fn load(r: &Reader, prefix: &str) -> Result<Self> {
        Ok(Self {
            neighbors: Neighbors::load(r, &format!("{prefix}/userknn"))?,
        })
    }
}
