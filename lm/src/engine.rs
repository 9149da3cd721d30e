//! The batched generation engine: many rows share one KV cache; each row has its own
//! prompt length, sampling settings, stop strings, and may receive forced tokens (a tool
//! response) between turns. For every row it records the token ids, a mask (1 sampled,
//! 0 prompt or forced) and the sampling log-probs. Generated text is never re-tokenized.

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

pub struct Engine<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    cache: KvCache,
    /// `slots[s]` is the row whose keys live in cache slot s.
    slots: Vec<Option<RowId>>,
    rows: Vec<Row>,
    /// Hard cap on a row's total tokens.
    pub max_context: usize,
    /// Forward passes run, for throughput reports.
    pub forward_calls: usize,
    /// Keep each row's last full next-token distribution (tests and debugging).
    pub keep_distributions: bool,
    /// Prompt tokens not run through the model because another row had the same prompt.
    pub fed_tokens_saved: usize,
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
            max_context: c.max_position_embeddings as usize,
            forward_calls: 0,
            keep_distributions: false,
            fed_tokens_saved: 0,
        }
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

    /// Releases the row's cache slot; its record stays readable.
    pub fn finish(&mut self, id: RowId) {
        let row = &mut self.rows[id];
        row.state = RowState::Finished;
        if let Some(s) = row.slot.take() {
            self.slots[s] = None;
        }
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
        self.assign_slots(&running);
        let (prefill, decode): (Vec<RowId>, Vec<RowId>) = running
            .iter()
            .partition(|&&i| self.rows[i].pending.len() > 1);
        // Rows that start from the same prompt with the same temperature (GRPO's G samples
        // of an episode) prefill once; the others copy that row's cache and distribution.
        let mut firsts: Vec<RowId> = Vec::new();
        let mut copies: Vec<(RowId, usize)> = Vec::new();
        for &i in &prefill {
            let same = |&f: &RowId| {
                let (a, b) = (&self.rows[f], &self.rows[i]);
                a.cached == 0
                    && b.cached == 0
                    && a.params.effective_temperature() == b.params.effective_temperature()
                    && a.params.is_greedy() == b.params.is_greedy()
                    && a.pending == b.pending
            };
            match firsts.iter().position(same) {
                Some(k) => copies.push((i, k)),
                None => firsts.push(i),
            }
        }
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

    /// Row `to` (same prompt as `from`, not yet fed) takes `from`'s freshly written cache.
    fn copy_prefill(&mut self, from: RowId, to: RowId) {
        let len = self.rows[from].cached;
        let (src, dst) = (self.rows[from].slot, self.rows[to].slot);
        if let (Some(src), Some(dst)) = (src, dst) {
            self.cache.copy_slot(src as i64, dst as i64, len);
        }
        let r = &mut self.rows[to];
        r.cached += r.pending.len() as i64;
        r.pending.clear();
        self.fed_tokens_saved += len as usize;
    }

    /// Gives every running row a cache slot, compacting away freed slots when many are idle.
    fn assign_slots(&mut self, running: &[RowId]) {
        let live = self.slots.iter().filter(|s| s.is_some()).count();
        let free = self.slots.len() - live;
        if free > 0 && free * 2 >= self.slots.len().max(1) {
            let keep: Vec<i64> = (0..self.slots.len())
                .filter(|&s| self.slots[s].is_some())
                .map(|s| s as i64)
                .collect();
            self.cache
                .retain(&Tensor::from_slice(&keep).to_device(self.model.device()));
            self.slots.retain(|s| s.is_some());
            for (s, r) in self.slots.iter().enumerate() {
                if let Some(r) = r {
                    self.rows[*r].slot = Some(s);
                }
            }
        }
        let need: Vec<RowId> = running
            .iter()
            .copied()
            .filter(|&i| self.rows[i].slot.is_none())
            .collect();
        let free_list: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].is_none())
            .collect();
        let mut free_slots = free_list.into_iter();
        let mut grow = 0;
        for &i in &need {
            match free_slots.next() {
                Some(s) => {
                    self.slots[s] = Some(i);
                    self.rows[i].slot = Some(s);
                }
                None => grow += 1,
            }
        }
        if grow > 0 {
            let base = self.slots.len();
            self.cache.add_slots(grow as i64);
            let newcomers: Vec<RowId> = need
                .into_iter()
                .filter(|&i| self.rows[i].slot.is_none())
                .collect();
            for (k, i) in newcomers.into_iter().enumerate() {
                self.slots.push(Some(i));
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
