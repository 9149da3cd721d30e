//! Ranking metrics, answer parsing and the RecThinker reward: plain math on what a rollout
//! produced (no model code, no tensors).

pub mod answer;
pub mod composite;
pub mod metrics;

pub use answer::{parse_answer, rank_in, AnswerError};
pub use composite::{efficiency, reward, Outcome, RewardConfig, RewardParts};
pub use metrics::{ndcg_at_rank, ndcg_score, rank_of, NdcgSummary};
