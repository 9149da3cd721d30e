//! Ranking metrics.

/// NDCG@k of a single relevant item found at 1-based `rank`: 1 / log2(rank + 1) within the
/// cut-off, else 0 (the ideal DCG of one relevant item is 1).
pub fn ndcg_at_rank(rank: usize, k: usize) -> f64 {
    if rank == 0 || rank > k {
        0.0
    } else {
        1.0 / ((rank + 1) as f64).log2()
    }
}

/// The 1-based rank of `target` when items are sorted by descending `scores` (ties broken
/// pessimistically: equal scores rank ahead of the target).
pub fn rank_of(scores: &[f64], target: usize) -> usize {
    let t = scores[target];
    1 + scores
        .iter()
        .enumerate()
        .filter(|&(i, &s)| i != target && s >= t)
        .count()
}

/// Graded NDCG@k with linear gains, as scikit-learn's `ndcg_score` for one sample without
/// ties in `scores`.
pub fn ndcg_score(relevance: &[f64], scores: &[f64], k: usize) -> f64 {
    let dcg = |order: &[usize]| -> f64 {
        order
            .iter()
            .take(k)
            .enumerate()
            .map(|(i, &j)| relevance[j] / ((i + 2) as f64).log2())
            .sum()
    };
    let mut by_score: Vec<usize> = (0..scores.len()).collect();
    by_score.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut ideal: Vec<usize> = (0..relevance.len()).collect();
    ideal.sort_by(|&a, &b| relevance[b].total_cmp(&relevance[a]));
    let best = dcg(&ideal);
    if best == 0.0 {
        0.0
    } else {
        dcg(&by_score) / best
    }
}

/// Mean NDCG@1/5/10 over target ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct NdcgSummary {
    #[serde(rename = "ndcg@1")]
    pub ndcg1: f64,
    #[serde(rename = "ndcg@5")]
    pub ndcg5: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
}

impl NdcgSummary {
    pub fn from_ranks(ranks: &[usize]) -> Self {
        let n = ranks.len().max(1) as f64;
        let mean = |k| ranks.iter().map(|&r| ndcg_at_rank(r, k)).sum::<f64>() / n;
        Self {
            ndcg1: mean(1),
            ndcg5: mean(5),
            ndcg10: mean(10),
        }
    }
}

/// The 1-based rank of the candidate at 0-based `target_index` in `ranking` (1-based
/// candidate indices, best first, as the protocol's answer parser returns them).
pub fn rank_in(ranking: &[usize], target_index: usize) -> Option<usize> {
    ranking
        .iter()
        .position(|&i| i == target_index + 1)
        .map(|p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_of_the_target_in_a_ranking() {
        assert_eq!(rank_in(&[3, 1, 2, 4], 0), Some(2));
        assert_eq!(rank_in(&[3, 1], 3), None);
    }

    #[test]
    fn single_item_ndcg() {
        assert_eq!(ndcg_at_rank(1, 10), 1.0);
        assert!((ndcg_at_rank(3, 10) - 0.5).abs() < 1e-12);
        assert_eq!(ndcg_at_rank(6, 5), 0.0);
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 2), 2);
        assert_eq!(rank_of(&[0.5, 0.5], 1), 2, "ties rank ahead of the target");
    }

    #[test]
    fn random_expectation_for_one_in_ten() {
        // A uniformly random rank among 10: E[NDCG@10] = mean of 1/log2(r+1) ~ 0.4544.
        let s = NdcgSummary::from_ranks(&(1..=10).collect::<Vec<_>>());
        assert!((s.ndcg10 - 0.4544).abs() < 1e-3 && (s.ndcg1 - 0.1).abs() < 1e-12);
    }
}
