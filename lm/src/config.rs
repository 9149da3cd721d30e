//! `config.json` of an HF Llama or Qwen2 checkpoint, reduced to what the forward pass needs.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The two decoder families we run. They differ only in q/k/v bias and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
}

/// How RoPE frequencies are scaled (`rope_scaling` / `rope_parameters.rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub eos_token_ids: Vec<i64>,
    pub bos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    /// The original JSON, kept so export writes back every key we do not interpret.
    pub raw: Value,
}

fn get_i64(v: &Value, key: &str) -> Result<i64> {
    v.get(key)
        .and_then(Value::as_i64)
        .with_context(|| format!("config.json: missing or non-integer key `{key}`"))
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// `eos_token_id` may be an integer or a list of integers.
pub fn token_id_list(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let raw: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {} as JSON", path.display()))?;
        Self::from_json(raw).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(raw: Value) -> Result<Self> {
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .context("config.json: missing key `model_type`")?
            .to_string();
        let family = match model_type.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            other => {
                bail!("config.json: unsupported model_type `{other}` (supported: llama, qwen2)")
            }
        };
        if raw.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            bail!("config.json: use_sliding_window=true is not supported (full attention only)");
        }
        let hidden_size = get_i64(&raw, "hidden_size")?;
        let num_attention_heads = get_i64(&raw, "num_attention_heads")?;
        let num_key_value_heads = raw
            .get("num_key_value_heads")
            .and_then(Value::as_i64)
            .unwrap_or(num_attention_heads);
        let head_dim = raw
            .get("head_dim")
            .and_then(Value::as_i64)
            .unwrap_or(hidden_size / num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "config.json: num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})"
            );
        }
        // transformers 5 nests RoPE settings in `rope_parameters`; older files use
        // top-level `rope_theta` and `rope_scaling`.
        let rope_params = raw.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = rope_params
            .and_then(|p| get_f64(p, "rope_theta"))
            .or_else(|| get_f64(&raw, "rope_theta"))
            .unwrap_or(10000.0);
        let scaling = rope_params
            .or_else(|| raw.get("rope_scaling").filter(|v| v.is_object()))
            .cloned();
        let rope_scaling = parse_rope_scaling(scaling.as_ref())?;
        let attention_bias = match family {
            Family::Qwen2 => true,
            Family::Llama => raw
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        Ok(Self {
            family,
            vocab_size: get_i64(&raw, "vocab_size")?,
            hidden_size,
            intermediate_size: get_i64(&raw, "intermediate_size")?,
            num_hidden_layers: get_i64(&raw, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(&raw, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw
                .get("max_position_embeddings")
                .and_then(Value::as_i64)
                .unwrap_or(4096),
            tie_word_embeddings: raw
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias,
            mlp_bias: raw
                .get("mlp_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            eos_token_ids: token_id_list(raw.get("eos_token_id")),
            bos_token_id: raw.get("bos_token_id").and_then(Value::as_i64),
            pad_token_id: raw.get("pad_token_id").and_then(Value::as_i64),
            model_type,
            raw,
        })
    }
}

fn parse_rope_scaling(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(v) = v else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = get_f64(v, "factor").unwrap_or(1.0);
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor,
            low_freq_factor: get_f64(v, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f64(v, "high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: get_f64(v, "original_max_position_embeddings")
                .unwrap_or(8192.0),
        }),
        other => bail!(
            "config.json: unsupported rope scaling type `{other}` (supported: default, linear, llama3)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
               "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})
    }

    #[test]
    fn reads_both_rope_theta_forms() {
        let mut old = base();
        old["rope_theta"] = json!(500.0);
        assert_eq!(ModelConfig::from_json(old).unwrap().rope_theta, 500.0);
        let mut new = base();
        new["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "default"});
        let cfg = ModelConfig::from_json(new).unwrap();
        assert_eq!(cfg.rope_theta, 100000.0);
        assert_eq!(cfg.rope_scaling, RopeScaling::None);
    }

    #[test]
    fn rejects_unknown_model_type_by_name() {
        let mut v = base();
        v["model_type"] = json!("mamba");
        let err = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("mamba"), "{err}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_gqa_defaults() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        v["num_key_value_heads"] = json!(1);
        v["eos_token_id"] = json!([3, 4]);
        let cfg = ModelConfig::from_json(v).unwrap();
        assert!(cfg.attention_bias);
        assert_eq!(cfg.head_dim, 4);
        assert_eq!(cfg.eos_token_ids, vec![3, 4]);
    }
}
