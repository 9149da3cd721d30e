//! BPR-MF (Rendle et al. 2009): user and item factors trained by SGD on (user, seen item,
//! unseen item) triples from the training split.

use super::TrainOptions;
use anyhow::{bail, Result};
use datasets::store::{Reader, Writer};
use datasets::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

pub const DIM: usize = 64;

pub struct Bpr {
    pub dim: usize,
    pub users: Vec<f32>,
    pub items: Vec<f32>,
    pub item_bias: Vec<f32>,
}

impl Bpr {
    pub fn train(train: &[Vec<Event>], n_items: usize, opts: &TrainOptions) -> Self {
        let (lr, reg) = (0.05f32, 0.0025f32);
        let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xB9B);
        let init = |n: usize, rng: &mut StdRng| {
            (0..n)
                .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
                .collect::<Vec<f32>>()
        };
        let mut users = init(train.len() * DIM, &mut rng);
        let mut items = init(n_items * DIM, &mut rng);
        let mut item_bias = vec![0.0f32; n_items];
        let seen: Vec<HashSet<u32>> = train
            .iter()
            .map(|s| s.iter().map(|e| e.item).collect())
            .collect();
        let pairs: Vec<(u32, u32)> = train
            .iter()
            .enumerate()
            .flat_map(|(u, s)| s.iter().map(move |e| (u as u32, e.item)))
            .collect();
        let bar = if opts.progress {
            lm::progress::Progress::new("BPR-MF", "epochs", opts.bpr_epochs, 0)
        } else {
            lm::progress::Progress::hidden()
        };
        for _ in 0..opts.bpr_epochs {
            for _ in 0..pairs.len() {
                let (u, i) = pairs[rng.random_range(0..pairs.len())];
                let j = loop {
                    let j = rng.random_range(0..n_items as u32);
                    if !seen[u as usize].contains(&j) {
                        break j;
                    }
                };
                let (uo, io, jo) = (u as usize * DIM, i as usize * DIM, j as usize * DIM);
                let mut x = item_bias[i as usize] - item_bias[j as usize];
                for d in 0..DIM {
                    x += users[uo + d] * (items[io + d] - items[jo + d]);
                }
                let g = 1.0 / (1.0 + x.exp()); // d/dx of ln sigmoid(x)
                item_bias[i as usize] += lr * (g - reg * item_bias[i as usize]);
                item_bias[j as usize] += lr * (-g - reg * item_bias[j as usize]);
                for d in 0..DIM {
                    let (pu, qi, qj) = (users[uo + d], items[io + d], items[jo + d]);
                    users[uo + d] += lr * (g * (qi - qj) - reg * pu);
                    items[io + d] += lr * (g * pu - reg * qi);
                    items[jo + d] += lr * (-g * pu - reg * qj);
                }
            }
            bar.inc(1);
        }
        bar.finish();
        Self {
            dim: DIM,
            users,
            items,
            item_bias,
        }
    }

    pub fn score(&self, user: u32, item: u32) -> f32 {
        let (uo, io) = (user as usize * self.dim, item as usize * self.dim);
        self.item_bias[item as usize]
            + (0..self.dim)
                .map(|d| self.users[uo + d] * self.items[io + d])
                .sum::<f32>()
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        w.put(&format!("{prefix}/bpr/dim"), &[self.dim as u32])?;
        w.put(&format!("{prefix}/bpr/users"), &self.users)?;
        w.put(&format!("{prefix}/bpr/items"), &self.items)?;
        w.put(&format!("{prefix}/bpr/item_bias"), &self.item_bias)
    }

    pub fn load(r: &Reader, prefix: &str) -> Result<Self> {
        let dim = r
            .get::<u32>(&format!("{prefix}/bpr/dim"))?
            .first()
            .copied()
            .unwrap_or(0) as usize;
        if dim == 0 {
            bail!(
                "{}: dataset /{prefix}/bpr/dim is missing or zero",
                r.path.display()
            );
        }
        Ok(Self {
            dim,
            users: r.get(&format!("{prefix}/bpr/users"))?,
            items: r.get(&format!("{prefix}/bpr/items"))?,
            item_bias: r.get(&format!("{prefix}/bpr/item_bias"))?,
        })
    }
}
