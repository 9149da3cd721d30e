//! Token choice from one row of log-probabilities: greedy, or temperature / top-k / top-p
//! sampling with a per-row seeded RNG (so a row samples the same alone or in a batch).

use crate::constraint::Constraint;
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f64,
    /// Sampled tokens per turn (a turn ends at a stop, EOS or this limit).
    pub max_new_tokens: usize,
    /// Text that ends the turn when it appears in the generated text.
    pub stop: Vec<String>,
    pub seed: u64,
    /// Keep going past EOS (benchmarks that need a fixed token count).
    pub ignore_eos: bool,
    /// Restricts the next token while active (structured answers); None: free.
    pub constraint: Option<Constraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 256,
            stop: Vec::new(),
            seed: 0,
            ignore_eos: false,
            constraint: None,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    /// The temperature the log-probs are computed at (1 for greedy).
    /// The constraint that applies after `turn_text`, if any.
    pub fn active_constraint(&self, turn_text: &str) -> Option<&Constraint> {
        self.constraint.as_ref().filter(|c| c.0.active(turn_text))
    }
    pub fn effective_temperature(&self) -> f64 {
        if self.is_greedy() {
            1.0
        } else {
            self.temperature
        }
    }
}

/// Picks a token from `logprobs` (log-softmax at the row's temperature); returns (token,
/// its log-prob under that full distribution, before any top-k/top-p cut).
pub fn choose(logprobs: &[f32], params: &SamplingParams, rng: &mut StdRng) -> (usize, f32) {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logprobs.iter().enumerate() {
            if v > logprobs[best] {
                best = i;
            }
        }
        best
    };
    if params.is_greedy() {
        let t = argmax();
        return (t, logprobs[t]);
    }
    let cut = params.top_k > 0 && params.top_k < logprobs.len() || params.top_p < 1.0;
    let u: f64 = rng.random();
    if !cut {
        // Inverse CDF over the whole vocabulary.
        let mut acc = 0.0f64;
        for (i, &lp) in logprobs.iter().enumerate() {
            acc += (lp as f64).exp();
            if acc > u {
                return (i, lp);
            }
        }
        let t = argmax();
        return (t, logprobs[t]);
    }
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    let desc = |a: &usize, b: &usize| logprobs[*b].total_cmp(&logprobs[*a]);
    if params.top_k > 0 && params.top_k < order.len() {
        order.select_nth_unstable_by(params.top_k - 1, desc);
        order.truncate(params.top_k);
    }
    order.sort_unstable_by(desc);
    let mut kept = Vec::with_capacity(order.len());
    let mut mass = 0.0f64;
    for &i in &order {
        kept.push(i);
        mass += (logprobs[i] as f64).exp();
        if mass >= params.top_p {
            break;
        }
    }
    let target = u * mass;
    let mut acc = 0.0f64;
    for &i in &kept {
        acc += (logprobs[i] as f64).exp();
        if acc > target {
            return (i, logprobs[i]);
        }
    }
    let last = kept[kept.len() - 1];
    (last, logprobs[last])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lp(p: &[f64]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut rng = StdRng::seed_from_u64(0);
        let (t, l) = choose(&lp(&[0.1, 0.6, 0.3]), &SamplingParams::default(), &mut rng);
        assert_eq!(t, 1);
        assert!((l - 0.6f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_frequencies_follow_probabilities() {
        let probs = [0.1, 0.6, 0.3];
        let mut rng = StdRng::seed_from_u64(1);
        let k1 = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..50 {
            assert_eq!(choose(&lp(&probs), &k1, &mut rng).0, 1);
        }
        let full = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut counts = [0usize; 3];
        for _ in 0..20000 {
            counts[choose(&lp(&probs), &full, &mut rng).0] += 1;
        }
        for (c, p) in counts.iter().zip(probs) {
            assert!((*c as f64 / 20000.0 - p).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn top_p_drops_the_tail() {
        let probs = [0.5, 0.35, 0.15];
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..2000 {
            assert_ne!(choose(&lp(&probs), &params, &mut rng).0, 2);
        }
    }
}
