//! The rollout worker of recthinker: the agent loop that runs recommendation episodes on the
//! `lm` crate's generation engine against the tool suite. Many episodes x G samples run as
//! rows of one engine; each row is a small state machine (generate a turn -> answer, or call a
//! tool and continue with its result as forced tokens) until an answer or a limit.

pub mod config;
pub mod constrained;
pub mod episode;
pub mod generator;
pub mod prompt;
pub mod protocol;
pub mod run;
pub mod scripted;

pub use config::AgentConfig;
pub use episode::{AgentRow, CallRecord, EndReason};
pub use generator::{Generator, TurnEnd};
pub use protocol::ChatProtocol;
pub use run::{run_agent, run_agent_continuous, run_batches, AgentEnv};
