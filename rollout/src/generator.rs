//! What the agent loop drives: the model's generation engine, or a script (tests).

use anyhow::Result;
use lm::engine::{Engine, RowId, RowState, StopReason};
use lm::sampling::SamplingParams;

/// A row's turn ended: its text (sampled in this turn) and why it stopped.
#[derive(Debug, Clone)]
pub struct TurnEnd {
    pub row: RowId,
    pub text: String,
    pub reason: StopReason,
}

pub trait Generator {
    fn add(&mut self, prompt: &[i64], params: SamplingParams) -> Result<RowId>;
    /// Generates until at least one row's turn ends; empty when no row is running.
    fn advance(&mut self) -> Result<Vec<TurnEnd>>;
    /// Appends forced (mask 0) tokens and starts the row's next turn.
    fn resume(&mut self, row: RowId, forced: &[i64]) -> Result<()>;
    fn finish(&mut self, row: RowId);
    /// (ids, mask, logprobs) of the row.
    fn record(&self, row: RowId) -> (&[i64], &[u8], &[f32]);
    /// Drops a finished row's record once the caller copied it (long runs stay bounded).
    fn forget(&mut self, _row: RowId) {}
}

impl Generator for Engine<'_> {
    fn add(&mut self, prompt: &[i64], params: SamplingParams) -> Result<RowId> {
        self.add_row(prompt, params)
    }

    fn advance(&mut self) -> Result<Vec<TurnEnd>> {
        while self.running() > 0 {
            let stopped = self.step()?;
            if !stopped.is_empty() {
                return Ok(stopped
                    .into_iter()
                    .map(|row| {
                        let r = self.row(row);
                        let reason = match &r.state {
                            RowState::Stopped(reason) => reason.clone(),
                            _ => StopReason::Eos,
                        };
                        TurnEnd {
                            row,
                            text: r.turn_text().to_string(),
                            reason,
                        }
                    })
                    .collect());
            }
        }
        Ok(Vec::new())
    }

    fn resume(&mut self, row: RowId, forced: &[i64]) -> Result<()> {
        self.append_forced(row, forced, None)
    }

    fn finish(&mut self, row: RowId) {
        Engine::finish(self, row)
    }

    fn record(&self, row: RowId) -> (&[i64], &[u8], &[f32]) {
        let r = self.row(row);
        (&r.ids, &r.mask, &r.logprobs)
    }

    fn forget(&mut self, row: RowId) {
        Engine::forget(self, row)
    }
}
