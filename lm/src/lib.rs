//! A task-agnostic HF language-model library on libtorch: config, weights, the decoder
//! (Llama / Qwen2 / Qwen3 families), LoRA, tokenizer and chat template, the KV cache and the
//! batched generation engine. It knows nothing of recommendation, tools or rewards.

pub mod adapter;
pub mod attention;
pub mod autocast;
pub mod chat;
pub mod config;
pub mod constraint;
pub mod device;
pub mod engine;
pub mod fsutil;
pub mod kv_cache;
pub mod layers;
pub mod lora;
pub mod model;
pub mod policy;
pub mod profile;
pub mod progress;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod torch_env;
pub mod weights;

pub use config::ModelConfig;
pub use model::Model;
pub use policy::Policy;
