//! Checkpoint loading: sharded files, dtypes, and clear errors on broken checkpoints.

use testkit as support;

use lm::weights::save_safetensors;
use lm::Model;
use std::collections::BTreeMap;
use std::path::Path;
use support::*;
use tch::{Device, Kind, Tensor};

fn copy_model(src: &Path, name: &str) -> Scratch {
    let dir = scratch(name);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn logits(dir: &Path, kind: Kind) -> Tensor {
    let m = Model::load(dir, Device::Cpu, kind).unwrap();
    tch::no_grad(|| m.forward(&Tensor::from_slice(&[1i64, 400, 2000, 33, 7]).unsqueeze(0)))
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = tiny_model("qwen2");
    let dir = copy_model(&src, "sharded");
    let all = tensors(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let shard = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        weight_map.insert(name.clone(), shard.into());
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    save_safetensors(&a, None, &dir.join("model-00001-of-00002.safetensors")).unwrap();
    save_safetensors(&b, None, &dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(max_abs_diff(&logits(&dir, Kind::Float), &logits(&src, Kind::Float)) == 0.0);
}

#[test]
fn bf16_and_f16_run_close_to_f32() {
    let src = tiny_model("llama");
    let f32 = logits(&src, Kind::Float);
    for kind in [Kind::BFloat16, Kind::Half] {
        let l = logits(&src, kind);
        assert_eq!(l.kind(), Kind::Float, "logits come back as f32");
        let rel = max_abs_diff(&l, &f32) / f32.abs().max().double_value(&[]);
        assert!(rel < 0.1, "{kind:?}: relative diff {rel}");
    }
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("expected {} to fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model(&tiny_model("qwen2"), "missing");
    let mut all = tensors(&dir);
    all.remove("model.layers.1.self_attn.k_proj.bias");
    save_safetensors(&all, None, &dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.1.self_attn.k_proj.bias"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    let dir = copy_model(&tiny_model("llama"), "shape");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 96.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[128, 64]"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_and_missing_files_are_clear() {
    let dir = copy_model(&tiny_model("llama"), "mtype");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert!(load_err(&dir).contains("unsupported model_type `gpt_neox`"));
    std::fs::remove_file(&cfg_path).unwrap();
    assert!(load_err(&dir).contains("config.json"));
}

#[test]
fn every_parameter_is_registered_under_its_checkpoint_name() {
    for family in ["qwen2", "qwen3", "llama", "llama3"] {
        let dir = tiny_model(family);
        let m = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let mut ours: Vec<String> = m.vs.variables().into_keys().collect();
        ours.sort();
        let theirs: Vec<String> = tensors(&dir).into_keys().collect();
        assert_eq!(ours, theirs, "{family}");
    }
}

#[test]
fn missing_qwen3_head_norm_is_named() {
    let dir = copy_model(&tiny_model("qwen3"), "missing-qnorm");
    let mut all = tensors(&dir);
    all.remove("model.layers.1.self_attn.k_norm.weight");
    save_safetensors(&all, None, &dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );
}
