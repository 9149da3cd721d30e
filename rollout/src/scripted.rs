//! A `Generator` that plays scripted turn texts instead of sampling from a model: tests feed
//! the agent loop garbage through it, and it follows the engine's rules (stop strings end a
//! turn, `max_new_tokens` cuts it, the context limit ends the row).

use crate::generator::{Generator, TurnEnd};
use anyhow::Result;
use lm::engine::{RowId, StopReason};
use lm::sampling::SamplingParams;
use lm::tokenizer::Tokenizer;
use std::collections::VecDeque;

struct ScriptedRow {
    ids: Vec<i64>,
    mask: Vec<u8>,
    logprobs: Vec<f32>,
    params: SamplingParams,
    running: bool,
}

pub struct Scripted<'t> {
    tok: &'t Tokenizer,
    /// Turn texts per row, in order; a row whose script ran out ends its turn with EOS.
    scripts: Vec<VecDeque<String>>,
    rows: Vec<ScriptedRow>,
    pub max_context: usize,
    /// Tokens produced, to check that cost stays bounded.
    pub tokens_produced: usize,
}

impl<'t> Scripted<'t> {
    pub fn new(tok: &'t Tokenizer, scripts: Vec<Vec<String>>, max_context: usize) -> Self {
        Self {
            tok,
            scripts: scripts.into_iter().map(VecDeque::from).collect(),
            rows: Vec::new(),
            max_context,
            tokens_produced: 0,
        }
    }
}

impl Generator for Scripted<'_> {
    fn add(&mut self, prompt: &[i64], params: SamplingParams) -> Result<RowId> {
        self.rows.push(ScriptedRow {
            ids: prompt.to_vec(),
            mask: vec![0; prompt.len()],
            logprobs: vec![0.0; prompt.len()],
            params,
            running: true,
        });
        Ok(self.rows.len() - 1)
    }

    fn advance(&mut self) -> Result<Vec<TurnEnd>> {
        let mut ends = Vec::new();
        for row in 0..self.rows.len() {
            if !self.rows[row].running {
                continue;
            }
            let text = self
                .scripts
                .get_mut(row)
                .and_then(VecDeque::pop_front)
                .unwrap_or_default();
            let r = &mut self.rows[row];
            let mut ids = self.tok.encode(&text, false)?;
            let mut reason = StopReason::Eos;
            // Cut at the first stop string, as the engine would.
            let mut cut_text = text.clone();
            if let Some((pos, stop)) = r
                .params
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()).map(|p| (p + s.len(), s.clone())))
                .min_by_key(|(p, _)| *p)
            {
                cut_text = text[..pos].to_string();
                ids = self.tok.encode(&cut_text, false)?;
                reason = StopReason::StopString(stop);
            }
            if ids.len() > r.params.max_new_tokens {
                ids.truncate(r.params.max_new_tokens);
                cut_text = self.tok.decode(&ids, false)?;
                reason = StopReason::MaxNewTokens;
            }
            let room = self.max_context.saturating_sub(r.ids.len());
            if ids.len() >= room {
                ids.truncate(room);
                cut_text = self.tok.decode(&ids, false)?;
                reason = StopReason::ContextFull;
            }
            self.tokens_produced += ids.len();
            r.mask.extend(std::iter::repeat_n(1, ids.len()));
            r.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
            r.ids.extend(ids);
            r.running = false;
            ends.push(TurnEnd {
                row,
                text: cut_text,
                reason,
            });
        }
        Ok(ends)
    }

    fn resume(&mut self, row: RowId, forced: &[i64]) -> Result<()> {
        let r = &mut self.rows[row];
        r.ids.extend_from_slice(forced);
        r.mask.extend(std::iter::repeat_n(0, forced.len()));
        r.logprobs.extend(std::iter::repeat_n(0.0, forced.len()));
        r.running = true;
        Ok(())
    }

    fn finish(&mut self, row: RowId) {
        self.rows[row].running = false;
    }

    fn record(&self, row: RowId) -> (&[i64], &[u8], &[f32]) {
        let r = &self.rows[row];
        (&r.ids, &r.mask, &r.logprobs)
    }
}
