//! The RecThinker reward (PROTOCOL.md "Reward"): correctness first, scaled by an OTC-style
//! tool-efficiency term, minus a penalty per bad call.
//!
//! reward = r_fmt + r_acc * (1 - lambda + lambda * r_eff) - mu * bad_calls
//!   r_acc = NDCG@k of the target's rank (0 when invalid); r_fmt = 0 valid, -1 invalid;
//!   r_eff = cos(m * pi / (2m + c)) for m >= 1 tool calls, 1 for m = 0.

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Weight of the efficiency term inside the accuracy scale.
    pub lambda: f64,
    /// The `c` of r_eff: larger tolerates more calls.
    pub c: f64,
    /// Penalty per malformed, unknown or duplicate call.
    pub mu: f64,
    /// NDCG cut-off of r_acc.
    pub k: usize,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            lambda: 0.2,
            c: 4.0,
            mu: 0.05,
            k: 10,
        }
    }
}

/// What a finished episode produced, as far as the reward cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub valid: bool,
    /// 1-based rank of the target (for valid episodes).
    pub rank: Option<usize>,
    pub tool_calls: usize,
    pub bad_calls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardParts {
    pub acc: f64,
    pub fmt: f64,
    pub eff: f64,
    pub bad_penalty: f64,
    pub total: f64,
}

pub fn efficiency(calls: usize, c: f64) -> f64 {
    if calls == 0 {
        1.0
    } else {
        let m = calls as f64;
        (m * std::f64::consts::PI / (2.0 * m + c)).cos()
    }
}

pub fn reward(o: &Outcome, cfg: &RewardConfig) -> RewardParts {
    let acc = match (o.valid, o.rank) {
        (true, Some(r)) => crate::metrics::ndcg_at_rank(r, cfg.k),
        _ => 0.0,
    };
    let fmt = if o.valid { 0.0 } else { -1.0 };
    let eff = efficiency(o.tool_calls, cfg.c);
    let bad_penalty = cfg.mu * o.bad_calls as f64;
    let total = fmt + acc * (1.0 - cfg.lambda + cfg.lambda * eff) - bad_penalty;
    RewardParts {
        acc,
        fmt,
        eff,
        bad_penalty,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(valid: bool, rank: usize, calls: usize, bad: usize) -> Outcome {
        Outcome {
            valid,
            rank: Some(rank),
            tool_calls: calls,
            bad_calls: bad,
        }
    }

    #[test]
    fn exact_values() {
        let cfg = RewardConfig::default();
        // rank 1, no calls: 0 + 1 * (0.8 + 0.2 * 1) = 1
        assert!((reward(&out(true, 1, 0, 0), &cfg).total - 1.0).abs() < 1e-12);
        // rank 3 (NDCG 0.5), 2 calls: r_eff = cos(2pi/8) = sqrt(2)/2
        let r = reward(&out(true, 3, 2, 0), &cfg);
        let want = 0.5 * (0.8 + 0.2 * std::f64::consts::FRAC_1_SQRT_2);
        assert!((r.eff - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((r.total - want).abs() < 1e-12);
        // invalid with one bad call: -1 - 0.05
        let r = reward(
            &Outcome {
                valid: false,
                rank: None,
                tool_calls: 3,
                bad_calls: 1,
            },
            &cfg,
        );
        assert!((r.total + 1.05).abs() < 1e-12 && r.acc == 0.0);
        // one call: cos(pi/6)
        assert!((efficiency(1, 4.0) - (3f64).sqrt() / 2.0).abs() < 1e-12);
    }

    #[test]
    fn efficiency_never_lets_a_worse_rank_win_at_equal_calls() {
        let cfg = RewardConfig::default();
        for calls in 0..50 {
            for bad in 0..3 {
                for r in 1..10 {
                    let better = reward(&out(true, r, calls, bad), &cfg).total;
                    let worse = reward(&out(true, r + 1, calls, bad), &cfg).total;
                    assert!(
                        better > worse,
                        "calls {calls}: rank {r} {better} <= rank {} {worse}",
                        r + 1
                    );
                }
            }
        }
        // Efficiency stays in (0, 1] and falls with more calls.
        for m in 1..100 {
            let (a, b) = (efficiency(m, 4.0), efficiency(m + 1, 4.0));
            assert!(a > b && b > 0.0);
        }
    }
}
