//! The engine's prefix cache: which cached keys/values a new row can copy instead of
//! prefilling (a live row's tokens, or a finished row's slot kept in the store), the store's
//! eviction, and the weights probe that keeps a cache from outliving a weight change.

use super::{Engine, RowId, Slot};
use crate::model::Model;
use anyhow::Result;
use tch::{Kind, Tensor};

/// Shortest prefix worth copying from another slot instead of prefilling.
pub(super) const MIN_REUSE: usize = 16;

/// A new row waits one step for a row admitted in the same step when that row will hold at
/// least this many more of its prompt tokens than any cached prefix does now.
pub(super) const MIN_DEFER_GAIN: usize = 128;

/// A finished row's slot kept for its prefix.
pub(super) struct StoredPrefix {
    /// Unique per engine (indices into `store` shift on eviction).
    pub(super) key: u64,
    pub(super) slot: usize,
    /// The tokens whose keys/values the slot holds, positions 0..ids.len().
    pub(super) ids: Vec<i64>,
    /// Engine step of the last use (least recently used entries go first).
    pub(super) used: u64,
}

/// Where a new row's prefix comes from.
#[derive(Clone, Copy)]
pub(super) enum Source {
    Row(RowId),
    /// The key of an `Engine::store` entry.
    Stored(u64),
}

/// One element at each end of every weight tensor, read at creation: `step` compares them
/// again and fails when they changed (an optimizer step while the engine held keys/values
/// computed with the old weights). Cheap (one small gather per step), and not a proof: a
/// change that keeps every tensor's first and last element would slip through.
pub(super) struct WeightsProbe {
    probes: Vec<Tensor>,
    values: Vec<u32>,
}

impl WeightsProbe {
    pub(super) fn new(model: &Model) -> Self {
        let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut probes = Vec::new();
        for (_, t) in vars {
            let n = t.numel() as i64;
            if n == 0 {
                continue;
            }
            // A view, so later in-place updates show; tensors that cannot be viewed flat are
            // left out.
            if let Ok(flat) = t.f_view([-1]) {
                probes.push(flat.narrow(0, 0, 1));
                probes.push(flat.narrow(0, n - 1, 1));
            }
        }
        let mut w = Self {
            probes,
            values: Vec::new(),
        };
        w.values = w.read().unwrap_or_default();
        w
    }

    fn read(&self) -> Result<Vec<u32>> {
        if self.probes.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = tch::no_grad_guard();
        let v = Tensor::cat(&self.probes, 0)
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu);
        Ok(Vec::<f32>::try_from(v)?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    }

    pub(super) fn unchanged(&self) -> Result<bool> {
        Ok(self.read()? == self.values)
    }
}

/// Length of the common prefix of `a` and `b`.
pub(super) fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine<'_> {
    /// Frees the least recently used stored prefix whose key is not in `keep`; returns its
    /// slot.
    pub(super) fn evict_lru(&mut self, keep: &[u64]) -> Option<usize> {
        let k = (0..self.store.len())
            .filter(|&k| !keep.contains(&self.store[k].key))
            .min_by_key(|&k| (self.store[k].used, k))?;
        let e = self.store.remove(k);
        self.slots[e.slot] = Slot::Free;
        Some(e.slot)
    }

    /// Rows `a` and `b` hold the same tokens and sample at the same temperature, so they
    /// have the same next-token distribution.
    pub(super) fn same_tokens(&self, a: RowId, b: RowId) -> bool {
        let (a, b) = (&self.rows[a], &self.rows[b]);
        a.ids.len() == b.ids.len()
            && a.params.effective_temperature() == b.params.effective_temperature()
            && a.params.is_greedy() == b.params.is_greedy()
            && a.ids == b.ids
    }

    /// For each row that has never been fed: the longest prefix of its prompt whose
    /// keys/values some slot already holds (a live row's cached tokens or a stored prefix),
    /// at most all but its last token, reused when at least `MIN_REUSE` long. A row that
    /// would get `MIN_DEFER_GAIN` more tokens from a row prefilled in this very step waits
    /// one step instead (rows of several episodes admitted together share the system
    /// prompt). Returns (deferred rows, (row, source, length) to copy).
    pub(super) fn plan_prefixes(
        &mut self,
        running: &[RowId],
    ) -> (Vec<RowId>, Vec<(RowId, Source, usize)>) {
        let fresh: Vec<RowId> = running
            .iter()
            .copied()
            .filter(|&i| {
                let r = &self.rows[i];
                r.slot.is_none() && r.cached == 0 && r.pending.len() > MIN_REUSE
            })
            .collect();
        if fresh.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let live: Vec<RowId> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Row(r) if self.rows[*r].cached as usize >= MIN_REUSE => Some(*r),
                _ => None,
            })
            .collect();
        let mut deferred = Vec::new();
        let mut reuse = Vec::new();
        let mut leaders: Vec<RowId> = Vec::new();
        for i in fresh {
            if leaders.iter().any(|&a| self.same_tokens(a, i)) {
                continue; // copied whole after the leader's forward
            }
            let r = &self.rows[i];
            let want = r.pending.len() - 1;
            let mut best: Option<(Source, usize)> = None;
            let mut consider = |src: Source, have: &[i64]| {
                let n = common_prefix(have, &r.pending).min(want);
                if n > best.map_or(0, |b| b.1) {
                    best = Some((src, n));
                }
            };
            for &l in &live {
                let lr = &self.rows[l];
                consider(Source::Row(l), &lr.ids[..lr.cached as usize]);
            }
            for e in &self.store {
                consider(Source::Stored(e.key), &e.ids);
            }
            let have = best.map_or(0, |b| b.1);
            let soon = leaders
                .iter()
                .map(|&a| common_prefix(&self.rows[a].ids, &r.pending).min(want))
                .max()
                .unwrap_or(0);
            if soon >= have + MIN_DEFER_GAIN {
                deferred.push(i);
                continue;
            }
            if let Some((src, n)) = best.filter(|b| b.1 >= MIN_REUSE) {
                if let Source::Stored(key) = src {
                    if let Some(e) = self.store.iter_mut().find(|e| e.key == key) {
                        e.used = self.steps;
                    }
                }
                reuse.push((i, src, n));
            }
            leaders.push(i);
        }
        (deferred, reuse)
    }

    /// Row `i` (never fed, slot assigned) takes the first `len` positions of `src`'s slot.
    pub(super) fn copy_prefix(&mut self, i: RowId, src: Source, len: usize) {
        let from = match src {
            Source::Row(l) => self.rows[l].slot,
            Source::Stored(key) => self.store.iter().find(|e| e.key == key).map(|e| e.slot),
        };
        let (Some(from), Some(to)) = (from, self.rows[i].slot) else {
            return;
        };
        self.cache.copy_slot(from as i64, to as i64, len as i64);
        let r = &mut self.rows[i];
        r.cached = len as i64;
        r.pending.drain(..len);
        self.fed_tokens_saved += len;
        self.prefix_tokens_reused += len;
    }

    /// Row `to` (same tokens as `from`) takes `from`'s freshly written cache.
    pub(super) fn copy_prefill(&mut self, from: RowId, to: RowId) {
        let len = self.rows[from].cached;
        let (src, dst) = (self.rows[from].slot, self.rows[to].slot);
        if let (Some(src), Some(dst)) = (src, dst) {
            self.cache.copy_slot(src as i64, dst as i64, len);
        }
        let r = &mut self.rows[to];
        self.fed_tokens_saved += r.pending.len();
        r.cached += r.pending.len() as i64;
        r.pending.clear();
    }
}
