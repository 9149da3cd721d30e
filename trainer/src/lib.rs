//! The trainer: trajectory synthesis, SFT, GRPO, checkpoints and export. The `recthinker`
//! binary (src/main.rs) is a thin CLI over these modules.

pub mod algos;
pub mod checkpoint;
pub mod config;
pub mod config_check;
pub mod data_parallel;
pub mod evaluate;
pub mod export;
pub mod logprobs;
pub mod losses;
pub mod mcp_server;
pub mod optim;
pub mod plot;
pub mod rl;
pub mod rl_batch;
pub mod rl_log;
pub mod run_dir;
pub mod sequence;
pub mod serve;
pub mod sft;
pub mod synth;
pub mod teachers;
pub mod tensorboard;
pub mod train_common;
pub mod trajectory;
pub mod view;
