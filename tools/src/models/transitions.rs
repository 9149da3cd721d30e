//! Item-to-item transitions: how often other sequences of the knowledge horizon hold item b
//! within `WINDOW` positions after item a, cosine-normalized by the two items' counts. A
//! user's score for a candidate sums its transitions from the user's last `RECENT` items,
//! the most recent weighted most (1, 1/2, 1/3, ...): "what people watch next after what
//! this user just watched".
//!
//! Like EASE it is not stored: counting takes well under a second on MovieLens-100k, made
//! the first time a horizon's transitions are asked for (`Knowledge::transitions`). The
//! window and recency were chosen on the validation episodes of MovieLens-100k inside the
//! `rank_candidates` fusion (docs/results.md).

use datasets::Event;
use std::collections::HashMap;

/// How many positions after an item count as "next".
pub const WINDOW: usize = 10;
/// How many of the user's latest items a score looks back from.
pub const RECENT: usize = 10;

pub struct Transitions {
    /// (from, to) -> how many times `to` follows `from` within `WINDOW` positions.
    counts: HashMap<(u32, u32), u32>,
    /// Each item's number of interactions.
    item_count: Vec<u32>,
}

impl Transitions {
    pub fn train(sequences: &[Vec<Event>], n_items: usize) -> Self {
        let mut counts: HashMap<(u32, u32), u32> = HashMap::new();
        let mut item_count = vec![0u32; n_items];
        for seq in sequences {
            for (i, a) in seq.iter().enumerate() {
                if let Some(c) = item_count.get_mut(a.item as usize) {
                    *c += 1;
                }
                for b in seq.iter().skip(i + 1).take(WINDOW) {
                    *counts.entry((a.item, b.item)).or_default() += 1;
                }
            }
        }
        Self { counts, item_count }
    }

    /// Raw transitions from `from` to `to`, cosine-normalized.
    pub fn sim(&self, from: u32, to: u32) -> f64 {
        let n = self.counts.get(&(from, to)).copied().unwrap_or(0) as f64;
        if n == 0.0 {
            return 0.0;
        }
        let count = |i: u32| self.item_count.get(i as usize).copied().unwrap_or(0).max(1) as f64;
        n / (count(from) * count(to) + 1.0).sqrt()
    }

    /// Scores of `candidates` after `history` (oldest first): transitions from its last
    /// `RECENT` items, weighted 1/(1 + steps back).
    pub fn score(&self, history: &[u32], candidates: &[u32]) -> Vec<f64> {
        candidates
            .iter()
            .map(|&c| {
                history
                    .iter()
                    .rev()
                    .take(RECENT)
                    .enumerate()
                    .map(|(r, &h)| self.sim(h, c) / (1.0 + r as f64))
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(items: &[u32]) -> Vec<Event> {
        items
            .iter()
            .enumerate()
            .map(|(t, &item)| Event {
                item,
                rating: 4.0,
                timestamp: t as i64,
            })
            .collect()
    }

    #[test]
    fn counts_what_follows_within_the_window_and_weights_recent_items_most() {
        // 0 -> 1 twice, 1 -> 2 once, nothing ever leads to 3 but itself being last.
        let t = Transitions::train(&[seq(&[0, 1, 2]), seq(&[0, 1]), seq(&[3])], 4);
        let cos = |n: f64, a: f64, b: f64| n / (a * b + 1.0).sqrt();
        assert!((t.sim(0, 1) - cos(2.0, 2.0, 2.0)).abs() < 1e-12);
        assert!((t.sim(0, 2) - cos(1.0, 2.0, 1.0)).abs() < 1e-12);
        assert_eq!(t.sim(1, 0), 0.0, "transitions are directed");
        assert_eq!(t.sim(2, 3), 0.0);
        // History [1, 0]: 0 is the latest (weight 1), 1 one step back (weight 1/2).
        let s = t.score(&[1, 0], &[1, 2, 3]);
        assert!((s[0] - t.sim(0, 1)).abs() < 1e-12);
        assert!((s[1] - (t.sim(0, 2) + t.sim(1, 2) / 2.0)).abs() < 1e-12);
        assert_eq!(s[2], 0.0);
        // Items out of range never panic.
        assert_eq!(t.sim(99, 1), 0.0);
    }

    #[test]
    fn window_bounds_what_counts_as_next() {
        let items: Vec<u32> = (0..(WINDOW as u32 + 2)).collect();
        let t = Transitions::train(&[seq(&items)], items.len());
        assert!(t.sim(0, WINDOW as u32) > 0.0);
        assert_eq!(t.sim(0, WINDOW as u32 + 1), 0.0);
    }
}
