//! One engine step's model work: a forward over a group of rows (prefill or decode), the
//! next-token choice on the device or the distribution to sample from, and appending the
//! token to its row with stop checks.

use super::{Engine, RowId, RowState, StopReason};
use crate::constraint::restrict;
use crate::model::AttnContext;
use crate::sampling::choose;
use anyhow::Result;
use tch::{Kind, Tensor};

/// A row's next token: chosen on the device (greedy), or its full log-prob row to sample from.
#[derive(Clone)]
pub(super) enum Next {
    Chosen(i64, f32),
    Distribution(Vec<f32>),
}

impl Engine<'_> {
    /// Feeds each row's pending tokens; returns each row's next token or its distribution.
    pub(super) fn forward_group(&mut self, group: &[RowId]) -> Result<Vec<Next>> {
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
                in_place: self.in_place_decode,
            },
        );
        self.forward_calls += 1;
        if self.in_place_decode && !all_rows && s as i64 <= crate::attention::SHORT_QUERY {
            self.in_place_forwards += 1;
        }
        let h = hidden.size()[2];
        let last_t = Tensor::from_slice(&last).to_device(device);
        let picked = hidden.view([-1, h]).index_select(0, &last_t);
        let temps_t = Tensor::from_slice(&temps).to_device(device).unsqueeze(1);
        let lp = crate::profile::time("lm_head", || {
            (self.model.logits(&picked) / temps_t).log_softmax(-1, Kind::Float)
        });
        for &i in group {
            let r = &mut self.rows[i];
            r.cached += r.pending.len() as i64;
            r.pending.clear();
        }
        let all_greedy = group.iter().all(|&i| {
            let r = &self.rows[i];
            r.params.is_greedy() && r.params.active_constraint(&r.turn.text).is_none()
        });
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
    pub(super) fn sample_into(&mut self, i: RowId, next: Next) -> Result<bool> {
        let eos = &self.tok.eos_ids;
        let r = &mut self.rows[i];
        let (t, lp) = match next {
            Next::Chosen(t, lp) => (t, lp),
            Next::Distribution(mut logprobs) => {
                if let Some(c) = r.params.active_constraint(&r.turn.text) {
                    restrict(&mut logprobs, &c.0.allowed(&r.turn.text));
                }
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
