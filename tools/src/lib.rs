//! The agent's tools and the collaborative models behind them. Everything here is built
//! from the training split only (PROTOCOL.md leakage rule), and for training episodes from
//! what precedes each user's first training target (`world::Horizon`).

pub mod baselines;
pub mod fusion;
pub mod models;
pub mod rank_tool;
pub mod registry;
pub mod suite;
pub mod world;

pub use registry::{Observation, Registry, ToolCall};
pub use world::{EpisodeView, Horizon, Knowledge, World};
