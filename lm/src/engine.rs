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

use crate::kv_cache::KvCache;
use crate::model::{AttnContext, Model};
use crate::sampling::{choose, SamplingParams};
use crate::tokenizer::{TextStream, Tokenizer};
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Kind, Tensor};

pub type RowId = usize;

/// A row's next token: chosen on the device (greedy), or its full log-prob row to sample from.
#[derive(Clone)]
enum Next {
    Chosen(i64, f32),
    Distribution(Vec<f32>),
}

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

/// Shortest prefix worth copying from another slot instead of prefilling.
const MIN_REUSE: usize = 16;
/// A new row waits one step for a row admitted in the same step when that row will hold at
/// least this many more of its prompt tokens than any cached prefix does now.
const MIN_DEFER_GAIN: usize = 128;

/// What a cache slot holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Free,
    /// The keys of a live (running or stopped) row.
    Row(RowId),
    /// A finished row's keys, kept as a reusable prefix (`Engine::store`).
    Stored,
}

/// A finished row's slot kept for its prefix.
struct StoredPrefix {
    /// Unique per engine (indices into `store` shift on eviction).
    key: u64,
    slot: usize,
    /// The tokens whose keys/values the slot holds, positions 0..ids.len().
    ids: Vec<i64>,
    /// Engine step of the last use (least recently used entries go first).
    used: u64,
}

/// Where a new row's prefix comes from.
#[derive(Clone, Copy)]
enum Source {
    Row(RowId),
    /// The key of an `Engine::store` entry.
    Stored(u64),
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

/// One element at each end of every weight tensor, read at creation: `step` compares them
/// again and fails when they changed (an optimizer step while the engine held keys/values
/// computed with the old weights). Cheap (one small gather per step), and not a proof: a
/// change that keeps every tensor's first and last element would slip through.
struct WeightsProbe {
    probes: Vec<Tensor>,
    values: Vec<u32>,
}

impl WeightsProbe {
    fn new(model: &Model) -> Self {
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

    fn unchanged(&self) -> Result<bool> {
        Ok(self.read()? == self.values)
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
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

    /// Frees the least recently used stored prefix whose key is not in `keep`; returns its
    /// slot.
    fn evict_lru(&mut self, keep: &[u64]) -> Option<usize> {
        let k = (0..self.store.len())
            .filter(|&k| !keep.contains(&self.store[k].key))
            .min_by_key(|&k| (self.store[k].used, k))?;
        let e = self.store.remove(k);
        self.slots[e.slot] = Slot::Free;
        Some(e.slot)
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
        self.assign_slots(&running, &keep);
        for (i, src, len) in reuse {
            self.copy_prefix(i, src, len);
        }
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
        for (group, shared) in [(firsts, copies), (decode, Vec::new())] {
            if group.is_empty() {
                continue;
            }
            let next = self.forward_group(&group)?;
            for &(i, k) in &shared {
                self.copy_prefill(group[k], i);
            }
            let shared_next: Vec<(RowId, Next)> =
                shared.iter().map(|&(i, k)| (i, next[k].clone())).collect();
            for (i, next) in group.iter().copied().zip(next).chain(shared_next) {
                if self.sample_into(i, next)? {
                    stopped.push(i);
                }
            }
        }
        Ok(stopped)
    }

    /// Rows `a` and `b` hold the same tokens and sample at the same temperature, so they
    /// have the same next-token distribution.
    fn same_tokens(&self, a: RowId, b: RowId) -> bool {
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
    fn plan_prefixes(&mut self, running: &[RowId]) -> (Vec<RowId>, Vec<(RowId, Source, usize)>) {
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
    fn copy_prefix(&mut self, i: RowId, src: Source, len: usize) {
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
    fn copy_prefill(&mut self, from: RowId, to: RowId) {
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

    /// Feeds each row's pending tokens; returns each row's next token or its distribution.
    fn forward_group(&mut self, group: &[RowId]) -> Result<Vec<Next>> {
        let device = self.model.device();
        let s = group
            .iter()
            .map(|&i| self.rows[i].pending.len())
            .max()
            .unwrap_or(1);
        let mut input = vec![0i64; group.len() * s];
        let mut slots = Vec::with_capacity(group.len());
        let mut starts = Vec::with_capacity(group.len());
        let mut last = Vec::with_capacity(group.len());
        let mut temps = Vec::with_capacity(group.len());
        for (k, &i) in group.iter().enumerate() {
            let r = &self.rows[i];
            input[k * s..k * s + r.pending.len()].copy_from_slice(&r.pending);
            slots.push(r.slot.expect("running rows have slots") as i64);
            starts.push(r.cached);
            last.push((k * s + r.pending.len() - 1) as i64);
            temps.push(r.params.effective_temperature() as f32);
        }
        let all_rows = slots.len() == self.slots.len()
            && slots.iter().enumerate().all(|(k, &s)| k as i64 == s);
        let input = Tensor::from_slice(&input)
            .view([group.len() as i64, s as i64])
            .to_device(device);
        let rows_t = Tensor::from_slice(&slots).to_device(device);
        let hidden = self.model.forward_hidden(
            &input,
            AttnContext::Cached {
                cache: &mut self.cache,
                rows: &rows_t,
                all_rows,
                starts: &starts,
            },
        );
        self.forward_calls += 1;
        let h = hidden.size()[2];
        let last_t = Tensor::from_slice(&last).to_device(device);
        let picked = hidden.view([-1, h]).index_select(0, &last_t);
        let temps_t = Tensor::from_slice(&temps).to_device(device).unsqueeze(1);
        let lp = (self.model.logits(&picked) / temps_t).log_softmax(-1, Kind::Float);
        for &i in group {
            let r = &mut self.rows[i];
            r.cached += r.pending.len() as i64;
            r.pending.clear();
        }
        let all_greedy = group.iter().all(|&i| self.rows[i].params.is_greedy());
        if all_greedy && !self.keep_distributions {
            // Only the argmax and its log-prob cross to the host, not [rows, vocab].
            let (best_lp, best) = lp.max_dim(-1, false);
            let best: Vec<i64> = Vec::try_from(best.to_device(tch::Device::Cpu))?;
            let best_lp: Vec<f32> = Vec::try_from(best_lp.to_device(tch::Device::Cpu))?;
            return Ok(best
                .into_iter()
                .zip(best_lp)
                .map(|(t, l)| Next::Chosen(t, l))
                .collect());
        }
        let lp = lp.to_device(tch::Device::Cpu).contiguous();
        let v = lp.size()[1] as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(lp.view([-1]))?;
        Ok(flat
            .chunks(v)
            .map(|c| Next::Distribution(c.to_vec()))
            .collect())
    }

    /// Samples one token for row `i`; returns true when the row stopped.
    fn sample_into(&mut self, i: RowId, next: Next) -> Result<bool> {
        let eos = &self.tok.eos_ids;
        let r = &mut self.rows[i];
        let (t, lp) = match next {
            Next::Chosen(t, lp) => (t, lp),
            Next::Distribution(logprobs) => {
                let (t, lp) = choose(&logprobs, &r.params, &mut r.rng);
                if self.keep_distributions {
                    r.last_distribution = Some(logprobs);
                }
                (t as i64, lp)
            }
        };
        r.ids.push(t);
        r.mask.push(1);
        r.logprobs.push(lp);
        r.pending.push(t);
        r.turn_tokens += 1;
        r.sampled_total += 1;
        let new_text = r.turn.push(self.tok, &r.ids)?;
        let reason = if eos.contains(&t) && !r.params.ignore_eos {
            Some(StopReason::Eos)
        } else if let Some(stop) = find_stop(&r.turn.text, new_text.len(), &r.params.stop) {
            Some(StopReason::StopString(stop))
        } else if r.turn_tokens >= r.params.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else if r.ids.len() >= self.max_context {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                r.state = RowState::Stopped(reason);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A stop string that ends within the last `new_len` bytes of `text`.
fn find_stop(text: &str, new_len: usize, stops: &[String]) -> Option<String> {
    if new_len == 0 {
        return None;
    }
    for stop in stops {
        let from = text.len().saturating_sub(new_len + stop.len());
        let from = (0..=from)
            .rev()
            .find(|&b| text.is_char_boundary(b))
            .unwrap_or(0);
        if text[from..].contains(stop.as_str()) {
            return Some(stop.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_stop;

    #[test]
    fn stop_strings_found_only_in_new_text() {
        let stops = vec!["</tool_call>".to_string()];
        assert_eq!(
            find_stop("abc</tool_call>", 3, &stops).as_deref(),
            Some("</tool_call>")
        );
        assert_eq!(find_stop("abc</tool_call>", 0, &stops), None);
        assert_eq!(find_stop("x</tool_", 2, &stops), None);
    }
}
