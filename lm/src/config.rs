//! `config.json` of an HF Llama, Qwen2 or Qwen3 checkpoint, reduced to what the forward pass
//! needs.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The decoder families we run (`model_type`). They share one decoder and differ in biases,
/// per-head q/k norms and defaults:
///
/// - `llama` (Llama 2/3.x, SmolLM): biases only with `attention_bias` (q/k/v/o) and `mlp_bias`.
/// - `qwen2` (Qwen2, Qwen2.5): q/k/v always biased, o_proj and MLP never.
/// - `qwen3`: RMSNorm of every q and k head (`q_norm`, `k_norm`) before RoPE; biases only with
///   `attention_bias` (q/k/v/o); `head_dim` defaults to 128 as in transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
}

impl Family {
    /// The `model_type` values we load, for error messages.
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3";
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
    /// Bias on q_proj, k_proj and v_proj.
    pub attention_bias: bool,
    /// Bias on o_proj.
    pub o_proj_bias: bool,
    /// Per-head RMSNorm of queries and keys (`self_attn.q_norm`, `self_attn.k_norm`), Qwen3.
    pub qk_norm: bool,
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
            "qwen3" => Family::Qwen3,
            other => {
                bail!(
                    "config.json: unsupported model_type `{other}` (supported: {})",
                    Family::SUPPORTED
                )
            }
        };
        if raw.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            bail!("config.json: use_sliding_window=true is not supported (full attention only)");
        }
        if let Some(types) = raw.get("layer_types").and_then(Value::as_array) {
            if let Some(t) = types.iter().find(|t| t.as_str() != Some("full_attention")) {
                bail!("config.json: layer_types holds {t}; only full_attention is supported");
            }
        }
        let hidden_size = get_i64(&raw, "hidden_size")?;
        let num_attention_heads = get_i64(&raw, "num_attention_heads")?;
        let num_key_value_heads = raw
            .get("num_key_value_heads")
            .and_then(Value::as_i64)
            .unwrap_or(num_attention_heads);
        // transformers' Qwen3Config defaults head_dim to 128, the others derive it.
        let head_dim = match raw.get("head_dim").filter(|v| !v.is_null()) {
            Some(v) => v
                .as_i64()
                .context("config.json: key `head_dim` is not an integer")?,
            None if family == Family::Qwen3 => 128,
            None => hidden_size / num_attention_heads,
        };
        if head_dim <= 0 || head_dim % 2 != 0 {
            bail!("config.json: head_dim must be a positive even number (RoPE), got {head_dim}");
        }
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
        let max_position_embeddings = raw
            .get("max_position_embeddings")
            .and_then(Value::as_i64)
            .unwrap_or(4096);
        // transformers takes a top-level `original_max_position_embeddings` first, then the
        // one in the scaling dict, then `max_position_embeddings`.
        let original_max = get_f64(&raw, "original_max_position_embeddings")
            .or_else(|| {
                scaling
                    .as_ref()
                    .and_then(|s| get_f64(s, "original_max_position_embeddings"))
            })
            .unwrap_or(max_position_embeddings as f64);
        let rope_scaling = parse_rope_scaling(scaling.as_ref(), original_max)?;
        for src in [Some(&raw), scaling.as_ref()].into_iter().flatten() {
            if let Some(f) = get_f64(src, "partial_rotary_factor").filter(|&f| f != 1.0) {
                bail!("config.json: partial_rotary_factor={f} is not supported (RoPE on the full head only)");
            }
        }
        let flag = |key: &str| raw.get(key).and_then(Value::as_bool).unwrap_or(false);
        let (attention_bias, o_proj_bias, mlp_bias) = match family {
            Family::Qwen2 => (true, false, false),
            Family::Qwen3 => (flag("attention_bias"), flag("attention_bias"), false),
            Family::Llama => (
                flag("attention_bias"),
                flag("attention_bias"),
                flag("mlp_bias"),
            ),
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
            max_position_embeddings,
            tie_word_embeddings: raw
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias,
            o_proj_bias,
            qk_norm: family == Family::Qwen3,
            mlp_bias,
            eos_token_ids: token_id_list(raw.get("eos_token_id")),
            bos_token_id: raw.get("bos_token_id").and_then(Value::as_i64),
            pad_token_id: raw.get("pad_token_id").and_then(Value::as_i64),
            model_type,
            raw,
        })
    }
}

fn parse_rope_scaling(v: Option<&Value>, original_max: f64) -> Result<RopeScaling> {
    let Some(v) = v else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || {
        get_f64(v, "factor")
            .with_context(|| format!("config.json: rope scaling `{kind}` needs a number `factor`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        "llama3" => {
            let low = get_f64(v, "low_freq_factor").unwrap_or(1.0);
            let high = get_f64(v, "high_freq_factor").unwrap_or(4.0);
            if high <= low {
                bail!("config.json: rope scaling llama3 needs high_freq_factor ({high}) > low_freq_factor ({low})");
            }
            Ok(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original_max,
            })
        }
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
        assert!(err.contains("mamba") && err.contains("qwen3"), "{err}");
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

    #[test]
    fn qwen3_has_qk_norm_no_bias_and_its_own_head_dim() {
        let mut v = base();
        v["model_type"] = json!("qwen3");
        v["head_dim"] = json!(6);
        let cfg = ModelConfig::from_json(v.clone()).unwrap();
        assert!(cfg.qk_norm && !cfg.attention_bias && !cfg.o_proj_bias);
        assert_eq!(cfg.head_dim, 6);
        v["attention_bias"] = json!(true);
        let cfg = ModelConfig::from_json(v.clone()).unwrap();
        assert!(cfg.attention_bias && cfg.o_proj_bias);
        v.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(ModelConfig::from_json(v).unwrap().head_dim, 128);
    }

    #[test]
    fn llama3_scaling_reads_both_forms_and_falls_back_to_max_positions() {
        let mut v = base();
        v["max_position_embeddings"] = json!(64);
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        let want = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        };
        assert_eq!(
            ModelConfig::from_json(v.clone()).unwrap().rope_scaling,
            want
        );
        let mut v5 = base();
        v5["max_position_embeddings"] = json!(64);
        v5["rope_parameters"] = v["rope_scaling"].clone();
        v5["rope_parameters"]["rope_theta"] = json!(500000.0);
        let cfg = ModelConfig::from_json(v5).unwrap();
        assert_eq!((cfg.rope_scaling, cfg.rope_theta), (want, 500000.0));
        v["rope_scaling"]["rope_type"] = json!("yarn");
        let err = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn sliding_layers_and_partial_rope_are_refused_by_key() {
        let mut v = base();
        v["layer_types"] = json!(["full_attention", "sliding_attention"]);
        let err = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("layer_types"), "{err}");
        let mut v = base();
        v["partial_rotary_factor"] = json!(0.5);
        let err = ModelConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("partial_rotary_factor"), "{err}");
    }
}
