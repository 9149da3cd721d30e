//! The batched generation engine: many rows share one KV cache; each row has its own
//! prompt length, sampling settings, stop strings, and may receive forced tokens (a tool
//! response) between turns. For every row it records the token ids, a mask (1 sampled,
//! 0 prompt or forced) and the sampling log-probs. Generated text is never re-tokenized.
//!
//! Prefix cache: a new row whose prompt starts with tokens whose keys/values are already in
//! the cache (a live row's tokens, or a bounded store of finished rows' slots) copies them
//! into its own slot and prefills only the rest. Reused keys/values sit at the same absolute
//! positions, so they are exactly what a prefill would write. The cache belongs to one
//! engine, which borrows the model; an engine must not outlive a weight change (create a new
//! one after every optimizer step): `step` checks a fingerprint of the weights and fails if
//! they changed.

mod forward;
mod prefix;

use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::tokenizer::{TextStream, Tokenizer};
use anyhow::{bail, Result};
use forward::Next;
use prefix::{Source, StoredPrefix, WeightsProbe, MIN_REUSE};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::Tensor;

pub type RowId = usize;

#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// An end-of-sequence token was sampled.
    Eos,
    /// The turn's text reached this stop string.
    StopString(String),
    /// The turn sampled `max_new_tokens` tokens.
    MaxNewTokens,
    /// The row's total length reached the engine's context limit.
    ContextFull,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    Running,
    /// Waiting for the caller: `append_forced` resumes it, `finish` releases it.
    Stopped(StopReason),
    Finished,
}

pub struct Row {
    /// Every token of the row: prompt, sampled and forced.
    pub ids: Vec<i64>,
    /// 1 where the token was sampled, 0 for prompt and forced tokens.
    pub mask: Vec<u8>,
    /// Log-prob of each sampled token at the row's temperature; 0 elsewhere.
    pub logprobs: Vec<f32>,
    pub state: RowState,
    pub params: SamplingParams,
    /// Text sampled in the current turn.
    pub turn: TextStream,
    turn_tokens: usize,
    /// Tokens not yet in the KV cache.
    pending: Vec<i64>,
    cached: i64,
    slot: Option<usize>,
    rng: StdRng,
    pub sampled_total: usize,
    /// The full next-token log-probs of the last step (only with `Engine::keep_distributions`).
    pub last_distribution: Option<Vec<f32>>,
}

impl Row {
    pub fn turn_text(&self) -> &str {
        &self.turn.text
    }
    pub fn generated_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.ids
            .iter()
            .zip(&self.mask)
            .filter(|(_, m)| **m == 1)
            .map(|(i, _)| *i)
    }
}

/// What a cache slot holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Slot {
    Free,
    /// The keys of a live (running or stopped) row.
    Row(RowId),
    /// A finished row's keys, kept as a reusable prefix (`Engine::store`).
    Stored,
}

pub struct Engine<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    cache: KvCache,
    /// What each cache slot holds.
    slots: Vec<Slot>,
    rows: Vec<Row>,
    /// Finished rows' slots kept for their prefixes, at most `max_stored_prefixes`.
    store: Vec<StoredPrefix>,
    /// Hard cap on a row's total tokens.
    pub max_context: usize,
    /// Forward passes run, for throughput reports.
    pub forward_calls: usize,
    /// Keep each row's last full next-token distribution (tests and debugging).
    pub keep_distributions: bool,
    /// Share computed prefixes between rows (identical prompts, live rows, stored prefixes).
    /// Off: every row prefills its whole prompt (tests compare both).
    pub prefix_cache: bool,
    /// Finished rows' slots kept as reusable prefixes (0: none). They only occupy slots that
    /// no live row needs: a new row takes a free slot, else the least recently used stored
    /// one, and the cache grows only when neither exists.
    pub max_stored_prefixes: usize,
    /// Decode steps of some of the cache's slots attend on the whole cache in place rather
    /// than on a gathered copy of their rows' keys and values (the same numbers; off: the
    /// copy, for tests that compare both).
    pub in_place_decode: bool,
    /// Forwards that took that in-place path.
    pub in_place_forwards: usize,
    /// Prompt tokens not run through the model because their keys/values were copied from
    /// another slot (an identical prompt in the same step, a live row, a stored prefix).
    pub fed_tokens_saved: usize,
    /// Of those, the ones copied from a live row or a stored prefix (not identical prompts).
    pub prefix_tokens_reused: usize,
    /// Tokens run through prefill forwards (rows with several pending tokens; no padding).
    pub prefilled_tokens: usize,
    steps: u64,
    next_key: u64,
    weights: WeightsProbe,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m Model, tok: &'m Tokenizer) -> Self {
        let c = &model.config;
        let cache = KvCache::new(
            model.layers.len(),
            0,
            c.num_key_value_heads,
            c.head_dim,
            model.kind,
            model.device(),
        );
        Self {
            model,
            tok,
            cache,
            slots: Vec::new(),
            rows: Vec::new(),
            store: Vec::new(),
            max_context: c.max_position_embeddings as usize,
            forward_calls: 0,
            keep_distributions: false,
            prefix_cache: true,
            max_stored_prefixes: 4,
            in_place_decode: true,
            in_place_forwards: 0,
            fed_tokens_saved: 0,
            prefix_tokens_reused: 0,
            prefilled_tokens: 0,
            steps: 0,
            next_key: 0,
            weights: WeightsProbe::new(model),
        }
    }

    /// Cache slots allocated now (live rows, stored prefixes, free).
    pub fn cache_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn add_row(&mut self, prompt: &[i64], params: SamplingParams) -> Result<RowId> {
        if prompt.is_empty() {
            bail!("generation needs a non-empty prompt");
        }
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("prompt token id {bad} is outside the vocabulary (size {vocab})");
        }
        let id = self.rows.len();
        let mut turn = TextStream::default();
        turn.reset_at(prompt.len());
        self.rows.push(Row {
            ids: prompt.to_vec(),
            mask: vec![0; prompt.len()],
            logprobs: vec![0.0; prompt.len()],
            state: RowState::Running,
            rng: StdRng::seed_from_u64(params.seed),
            params,
            turn,
            turn_tokens: 0,
            pending: prompt.to_vec(),
            cached: 0,
            slot: None,
            sampled_total: 0,
            last_distribution: None,
        });
        Ok(id)
    }

    pub fn row(&self, id: RowId) -> &Row {
        &self.rows[id]
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Appends tokens the model did not sample (mask 0) and resumes the row; the next turn
    /// uses `params` when given.
    pub fn append_forced(
        &mut self,
        id: RowId,
        forced: &[i64],
        params: Option<SamplingParams>,
    ) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some(bad) = forced.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("forced token id {bad} is outside the vocabulary (size {vocab})");
        }
        let row = &mut self.rows[id];
        if row.state == RowState::Finished {
            bail!("row {id} is finished; it cannot take more tokens");
        }
        row.ids.extend_from_slice(forced);
        row.mask.extend(std::iter::repeat_n(0, forced.len()));
        row.logprobs.extend(std::iter::repeat_n(0.0, forced.len()));
        row.pending.extend_from_slice(forced);
        if let Some(p) = params {
            row.params = p;
        }
        row.turn.reset_at(row.ids.len());
        row.turn_tokens = 0;
        row.state = RowState::Running;
        Ok(())
    }

    /// Releases the row's cache slot; its record stays readable. With the prefix cache on,
    /// the slot is kept as a stored prefix (the least recently used one goes when there are
    /// more than `max_stored_prefixes`).
    pub fn finish(&mut self, id: RowId) {
        let row = &mut self.rows[id];
        row.state = RowState::Finished;
        let Some(s) = row.slot.take() else { return };
        let cached = row.cached as usize;
        if self.prefix_cache && self.max_stored_prefixes > 0 && cached >= MIN_REUSE {
            self.slots[s] = Slot::Stored;
            self.next_key += 1;
            self.store.push(StoredPrefix {
                key: self.next_key,
                slot: s,
                ids: row.ids[..cached].to_vec(),
                used: self.steps,
            });
            while self.store.len() > self.max_stored_prefixes {
                self.evict_lru(&[]);
            }
        } else {
            self.slots[s] = Slot::Free;
        }
    }

    /// Drops a finished row's record (ids, mask, log-probs, text) to free host memory; the
    /// row id stays valid and reads as empty.
    pub fn forget(&mut self, id: RowId) {
        let r = &mut self.rows[id];
        if r.state != RowState::Finished {
            return;
        }
        r.ids = Vec::new();
        r.mask = Vec::new();
        r.logprobs = Vec::new();
        r.pending = Vec::new();
        r.turn = TextStream::default();
        r.last_distribution = None;
    }

    pub fn running(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.state == RowState::Running)
            .count()
    }

    /// Runs until no row is running.
    pub fn run(&mut self) -> Result<()> {
        while self.running() > 0 {
            self.step()?;
        }
        Ok(())
    }

    /// One forward for the rows that need it (prompts and forced tokens in one group,
    /// single-token decodes in another) and one sampled token per running row.
    /// Returns the rows that stopped in this step.
    pub fn step(&mut self) -> Result<Vec<RowId>> {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        if self.slots.iter().any(|s| *s != Slot::Free) && !self.weights.unchanged()? {
            bail!(
                "the model's weights changed while this engine held keys/values computed \
                 with the old ones; create a new Engine after every weight change"
            );
        }
        let running: Vec<RowId> = (0..self.rows.len())
            .filter(|&i| self.rows[i].state == RowState::Running)
            .collect();
        let mut stopped = Vec::new();
        for &i in &running {
            let r = &self.rows[i];
            if r.cached as usize + r.pending.len() > self.max_context {
                self.rows[i].state = RowState::Stopped(StopReason::ContextFull);
                stopped.push(i);
            }
        }
        let running: Vec<RowId> = running
            .into_iter()
            .filter(|&i| self.rows[i].state == RowState::Running)
            .collect();
        if running.is_empty() {
            return Ok(stopped);
        }
        let (deferred, reuse) = if self.prefix_cache {
            self.plan_prefixes(&running)
        } else {
            (Vec::new(), Vec::new())
        };
        let running: Vec<RowId> = running
            .into_iter()
            .filter(|i| !deferred.contains(i))
            .collect();
        let keep: Vec<u64> = reuse
            .iter()
            .filter_map(|&(_, src, _)| match src {
                Source::Stored(key) => Some(key),
                Source::Row(_) => None,
            })
            .collect();
        crate::profile::time("engine.slots", || {
            self.assign_slots(&running, &keep);
            for (i, src, len) in reuse {
                self.copy_prefix(i, src, len);
            }
        });
        let (prefill, decode): (Vec<RowId>, Vec<RowId>) = running
            .iter()
            .partition(|&&i| self.rows[i].pending.len() > 1);
        // Rows with the same tokens and temperature (GRPO's G samples of an episode) prefill
        // once; the others copy that row's cache and distribution.
        let mut firsts: Vec<RowId> = Vec::new();
        let mut copies: Vec<(RowId, usize)> = Vec::new();
        for &i in &prefill {
            let same = |&f: &RowId| self.prefix_cache && self.same_tokens(f, i);
            match firsts.iter().position(same) {
                Some(k) => copies.push((i, k)),
                None => firsts.push(i),
            }
        }
        self.prefilled_tokens += firsts
            .iter()
            .map(|&i| self.rows[i].pending.len())
            .sum::<usize>();
        for (name, group, shared) in [
            ("engine.prefill", firsts, copies),
            ("engine.decode", decode, Vec::new()),
        ] {
            if group.is_empty() {
                continue;
            }
            let next = crate::profile::time(name, || self.forward_group(&group))?;
            for &(i, k) in &shared {
                self.copy_prefill(group[k], i);
            }
            let shared_next: Vec<(RowId, Next)> =
                shared.iter().map(|&(i, k)| (i, next[k].clone())).collect();
            let t = std::time::Instant::now();
            for (i, next) in group.iter().copied().zip(next).chain(shared_next) {
                if self.sample_into(i, next)? {
                    stopped.push(i);
                }
            }
            if crate::profile::enabled() {
                crate::profile::add("engine.sample", t.elapsed().as_secs_f64());
            }
        }
        Ok(stopped)
    }

    /// Gives every running row a cache slot (a free one, else the least recently used
    /// stored prefix not in `keep`, else a new one), compacting away free slots when many
    /// are idle.
    fn assign_slots(&mut self, running: &[RowId], keep: &[u64]) {
        let free = self.slots.iter().filter(|s| **s == Slot::Free).count();
        if free > 0 && free * 2 >= self.slots.len().max(1) {
            let kept: Vec<usize> = (0..self.slots.len())
                .filter(|&s| self.slots[s] != Slot::Free)
                .collect();
            let keep_t: Vec<i64> = kept.iter().map(|&s| s as i64).collect();
            self.cache
                .retain(&Tensor::from_slice(&keep_t).to_device(self.model.device()));
            let mut new_index = vec![usize::MAX; self.slots.len()];
            for (n, &old) in kept.iter().enumerate() {
                new_index[old] = n;
            }
            for e in &mut self.store {
                e.slot = new_index[e.slot];
            }
            self.slots.retain(|s| *s != Slot::Free);
            for (s, slot) in self.slots.iter().enumerate() {
                if let Slot::Row(r) = slot {
                    self.rows[*r].slot = Some(s);
                }
            }
        }
        let need: Vec<RowId> = running
            .iter()
            .copied()
            .filter(|&i| self.rows[i].slot.is_none())
            .collect();
        let mut grow = Vec::new();
        for i in need {
            let free = self.slots.iter().position(|s| *s == Slot::Free);
            match free.or_else(|| self.evict_lru(keep)) {
                Some(s) => {
                    self.slots[s] = Slot::Row(i);
                    self.rows[i].slot = Some(s);
                }
                None => grow.push(i),
            }
        }
        if !grow.is_empty() {
            let base = self.slots.len();
            self.cache.add_slots(grow.len() as i64);
            for (k, i) in grow.into_iter().enumerate() {
                self.slots.push(Slot::Row(i));
                self.rows[i].slot = Some(base + k);
            }
        }
    }
}
