//! Ranking metrics and the RecThinker reward: plain math on what a rollout produced.

pub mod metrics;

pub use metrics::{ndcg_at_rank, ndcg_score, rank_of, NdcgSummary};
