//! The policy side of recthinker: the HF Llama/Qwen2 model on libtorch, its tokenizer and
//! chat template, and the KV-cache batched generation engine that rollouts run on.

pub mod agent;
pub mod chat;
pub mod config;
pub mod device;
pub mod engine;
pub mod fsutil;
pub mod kv_cache;
pub mod lora;
pub mod model;
pub mod policy;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use model::Model;
pub use policy::Policy;
