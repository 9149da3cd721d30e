//! Constrained decoding: a row may restrict the tokens it samples next, as the structured-output
//! modes of serving engines do. A constraint looks at the text sampled so far in the row's
//! current turn; while it is active, the engine masks every other token out of the row's
//! next-token distribution and renormalizes before choosing (greedy or sampled), so the
//! recorded log-prob is the one of the distribution actually sampled from.

use std::fmt;
use std::sync::Arc;

pub trait TokenConstraint: Send + Sync {
    /// Whether the constraint applies to the next token after `turn_text` (called every step
    /// for every constrained row: keep it cheap).
    fn active(&self, turn_text: &str) -> bool;
    /// The token ids allowed next after `turn_text` (only asked when `active`). Empty: none
    /// fits, and the row samples unconstrained rather than from an empty set.
    fn allowed(&self, turn_text: &str) -> Vec<i64>;
}

/// A shared constraint, carried by `SamplingParams`.
#[derive(Clone)]
pub struct Constraint(pub Arc<dyn TokenConstraint>);

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Constraint")
    }
}

/// Keeps only `allowed` in a row of log-probs and renormalizes them (log-sum-exp); the others
/// become -inf. Ids outside the row are ignored; with nothing left the row is unchanged.
pub fn restrict(logprobs: &mut [f32], allowed: &[i64]) {
    let kept: Vec<usize> = allowed
        .iter()
        .filter_map(|&t| usize::try_from(t).ok())
        .filter(|&t| t < logprobs.len() && logprobs[t].is_finite())
        .collect();
    if kept.is_empty() {
        return;
    }
    let max = kept
        .iter()
        .map(|&t| logprobs[t])
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = kept
        .iter()
        .map(|&t| ((logprobs[t] - max) as f64).exp())
        .sum();
    let norm = max + sum.ln() as f32;
    let mut out = vec![f32::NEG_INFINITY; logprobs.len()];
    for &t in &kept {
        out[t] = logprobs[t] - norm;
    }
    logprobs.copy_from_slice(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrict_renormalizes_over_the_allowed_tokens() {
        let p = [0.1f64, 0.6, 0.3];
        let mut lp: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
        restrict(&mut lp, &[0, 2, 7, -1]);
        assert!(lp[1].is_infinite() && lp[1] < 0.0);
        assert!((lp[0].exp() - 0.25).abs() < 1e-6);
        assert!((lp[2].exp() - 0.75).abs() < 1e-6);
        let mut same = vec![0.5f32.ln(); 2];
        restrict(&mut same, &[9]);
        assert_eq!(same, vec![0.5f32.ln(); 2]);
    }
}
