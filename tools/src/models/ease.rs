//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): an item-item
//! weight matrix B with a zero diagonal, fit in closed form on the binary user-item matrix X
//! of one knowledge horizon: P = (XᵀX + λI)⁻¹, B_ij = -P_ij / P_jj. A user's score for item
//! j is Σ_{h in history} B_hj.
//!
//! It is not stored: the fit is one inverse of an items x items matrix (~0.5 s for
//! MovieLens-100k's 1,682 items) in f64, made the first time a horizon's EASE scores are
//! asked for (`Knowledge::ease`).

use anyhow::{bail, Result};
use datasets::Event;
use tch::{Device, Kind, Tensor};

/// λ of the L2 penalty, chosen on MovieLens-100k's validation episodes (NDCG@10 0.762,
/// 0.788, 0.796, 0.800, 0.802, 0.800, 0.800 for λ 50, 150, 250, 400, 600, 800, 1000).
pub const LAMBDA: f64 = 600.0;

pub struct Ease {
    pub n_items: usize,
    /// Row-major `n_items x n_items`: `b[h * n_items + j]` is B_hj.
    pub b: Vec<f32>,
}

impl Ease {
    pub fn train(train: &[Vec<Event>], n_items: usize, lambda: f64) -> Result<Self> {
        if n_items == 0 || lambda <= 0.0 {
            bail!("EASE: needs items and a positive lambda (got {n_items} items, lambda {lambda})");
        }
        let _g = tch::no_grad_guard();
        let mut x = vec![0f64; train.len() * n_items];
        for (u, seq) in train.iter().enumerate() {
            for e in seq {
                x[u * n_items + e.item as usize] = 1.0;
            }
        }
        let x = Tensor::from_slice(&x).view([train.len() as i64, n_items as i64]);
        let eye = Tensor::eye(n_items as i64, (Kind::Double, Device::Cpu));
        let g = x.tr().mm(&x) + eye * lambda;
        let p = Tensor::linalg_inv(&g);
        let diag = p.diagonal(0, 0, 1);
        let mut b = -(p / diag.unsqueeze(0));
        let b = b
            .fill_diagonal_(0.0, false)
            .to_kind(Kind::Float)
            .contiguous();
        let b = Vec::<f32>::try_from(b.view([-1]))?;
        if b.iter().any(|v| !v.is_finite()) {
            bail!("EASE: the fit produced a non-finite weight (lambda {lambda})");
        }
        Ok(Self { n_items, b })
    }

    /// Scores of `candidates` for a user whose history holds `history` (repeats count once).
    pub fn score(&self, history: &[u32], candidates: &[u32]) -> Vec<f32> {
        let mut seen = vec![false; self.n_items];
        let mut s = vec![0f32; candidates.len()];
        for &h in history {
            let h = h as usize;
            if h >= self.n_items || std::mem::replace(&mut seen[h], true) {
                continue;
            }
            let row = &self.b[h * self.n_items..(h + 1) * self.n_items];
            for (out, &c) in s.iter_mut().zip(candidates) {
                *out += row.get(c as usize).copied().unwrap_or(0.0);
            }
        }
        s
    }
}
