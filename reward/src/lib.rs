//! Ranking metrics and the RecThinker reward: plain math on what a rollout produced (ranks,
//! validity, call counts; no text, no model code, no tensors). The answer's text is parsed by
//! the protocol (`rollout::protocol::parse_answer`).

pub mod composite;
pub mod metrics;

pub use composite::{efficiency, reward, Outcome, RewardConfig, RewardParts};
pub use metrics::{ndcg_at_rank, ndcg_score, rank_in, rank_of, NdcgSummary};
