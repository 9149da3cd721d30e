//! Collaborative models trained on the sequences of one knowledge horizon (`world::Horizon`);
//! saved into the dataset's HDF5 file under the horizon's group (`/models` for evaluation,
//! `/models_train` for training episodes) and reloaded (not retrained) by later commands.

pub mod bpr;
pub mod cooc;
pub mod ease;
pub mod sasrec;
pub mod transitions;
pub mod userknn;

use anyhow::{bail, Result};
use datasets::store::{Reader, Writer};
use datasets::{Event, Prepared};

pub struct CfModels {
    pub cooc: cooc::CoOccurrence,
    pub userknn: userknn::UserKnn,
    pub bpr: bpr::Bpr,
    /// Behind a mutex: libtorch tensors are Send but not Sync, and the world is shared by
    /// tool calls running in parallel.
    pub sasrec: sasrec::SasRec,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub seed: u64,
    pub bpr_epochs: usize,
    pub sasrec_epochs: usize,
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            bpr_epochs: 40,
            sasrec_epochs: 200,
            progress: true,
        }
    }
}

impl CfModels {
    /// Trains every model on `train` (each user's sequence as one horizon knows it).
    pub fn train(data: &Prepared, train: &[Vec<Event>], opts: &TrainOptions) -> Result<Self> {
        let n_items = data.items.len();
        Ok(Self {
            cooc: cooc::CoOccurrence::train(train, n_items),
            userknn: userknn::UserKnn::train(train, n_items),
            bpr: bpr::Bpr::train(train, n_items, opts),
            sasrec: sasrec::SasRec::new(sasrec::train(train, n_items, opts)?),
        })
    }

    /// Writes every model under the HDF5 group `prefix` (e.g. `models`).
    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        self.cooc.save(w, prefix)?;
        self.userknn.save(w, prefix)?;
        self.bpr.save(w, prefix)?;
        self.sasrec.save(w, prefix)
    }

    /// Reads the models `save` wrote under `prefix` for a dataset of `n_users` users and
    /// `n_items` items; a model whose shape does not fit them is an error naming its HDF5
    /// dataset (a damaged store or one from another dataset), never a panic later.
    pub fn load(r: &Reader, prefix: &str, n_users: usize, n_items: usize) -> Result<Self> {
        let cooc = cooc::CoOccurrence::load(r, prefix)?;
        cooc.sims
            .check(r, &format!("{prefix}/cooc/sims"), n_items, n_items)?;
        cooc.counts
            .check(r, &format!("{prefix}/cooc/counts"), n_items, n_items)?;
        let userknn = userknn::UserKnn::load(r, prefix)?;
        userknn
            .neighbors
            .check(r, &format!("{prefix}/userknn"), n_users, n_users)?;
        let bpr = bpr::Bpr::load(r, prefix)?;
        for (name, values, rows) in [
            ("users", &bpr.users, n_users * bpr.dim),
            ("items", &bpr.items, n_items * bpr.dim),
            ("item_bias", &bpr.item_bias, n_items),
        ] {
            if values.len() != rows {
                bail!(
                    "{}: dataset /{prefix}/bpr/{name} has {} values, expected {rows}",
                    r.path.display(),
                    values.len()
                );
            }
            finite(r, &format!("{prefix}/bpr/{name}"), values)?;
        }
        Ok(Self {
            cooc,
            userknn,
            bpr,
            sasrec: sasrec::SasRec::new(sasrec::SasRecWeights::load(r, prefix, n_items)?),
        })
    }
}

/// Model weights read from `name` must be finite numbers (NaN or inf: a damaged store).
pub fn finite(r: &Reader, name: &str, values: &[f32]) -> Result<()> {
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: dataset /{name}: row {k} is not a finite number",
            r.path.display()
        );
    }
    Ok(())
}

/// Sparse neighbour lists in CSR form: `neighbors[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Neighbors {
    pub offsets: Vec<u64>,
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Neighbors {
    pub fn of(&self, i: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = (
            self.offsets[i as usize] as usize,
            self.offsets[i as usize + 1] as usize,
        );
        self.ids[a..b]
            .iter()
            .copied()
            .zip(self.weights[a..b].iter().copied())
    }

    pub fn from_rows(rows: Vec<Vec<(u32, f32)>>) -> Self {
        let mut n = Self {
            offsets: vec![0],
            ..Default::default()
        };
        for row in rows {
            for (id, w) in row {
                n.ids.push(id);
                n.weights.push(w);
            }
            n.offsets.push(n.ids.len() as u64);
        }
        n
    }

    pub fn save(&self, w: &Writer, prefix: &str) -> Result<()> {
        w.put(&format!("{prefix}/offsets"), &self.offsets)?;
        w.put(&format!("{prefix}/ids"), &self.ids)?;
        w.put(&format!("{prefix}/weights"), &self.weights)
    }

    /// `rows` lists of ids below `n_ids`, laid out as `from_rows` lays them out.
    pub fn check(&self, r: &Reader, prefix: &str, rows: usize, n_ids: usize) -> Result<()> {
        let o = &self.offsets;
        if o.len() != rows + 1
            || o.first() != Some(&0)
            || o.last() != Some(&(self.ids.len() as u64))
            || o.windows(2).any(|w| w[0] > w[1])
        {
            bail!(
                "{}: dataset /{prefix}/offsets: expected {} non-decreasing offsets from 0 to {} \
                 (the length of /{prefix}/ids)",
                r.path.display(),
                rows + 1,
                self.ids.len()
            );
        }
        if self.weights.len() != self.ids.len() {
            bail!(
                "{}: dataset /{prefix}/weights has {} values, /{prefix}/ids {}",
                r.path.display(),
                self.weights.len(),
                self.ids.len()
            );
        }
        finite(r, &format!("{prefix}/weights"), &self.weights)?;
        if let Some(k) = self.ids.iter().position(|&i| i as usize >= n_ids) {
            bail!(
                "{}: dataset /{prefix}/ids: row {k} = {} is not below {n_ids}",
                r.path.display(),
                self.ids[k]
            );
        }
        Ok(())
    }

    pub fn load(r: &Reader, prefix: &str) -> Result<Self> {
        Ok(Self {
            offsets: r.get(&format!("{prefix}/offsets"))?,
            ids: r.get(&format!("{prefix}/ids"))?,
            weights: r.get(&format!("{prefix}/weights"))?,
        })
    }
}

/// Keeps the `k` largest (id, weight) pairs, ordered by weight then id.
pub fn top_k(mut v: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}
