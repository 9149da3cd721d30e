//! `recthinker adapter`: a fine-tuned model (here: a tiny Qwen2 plus a rank-4 update of every
//! projection, made by transformers' side) extracted as one PEFT LoRA adapter, then loaded by
//! `peft.PeftModel` on transformers and by our `Policy::load`; both must give the fine-tuned
//! model's logits. A lower rank keeps less of the difference and says so; a difference an
//! adapter cannot carry, and a broken adapter directory, are errors that name what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};
use testkit::*;

fn adapter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .arg("adapter")
        .args(args)
        .output()
        .unwrap()
}

fn tuned(dir: &Path) -> (PathBuf, PathBuf) {
    let base = tiny_model("qwen2");
    let tuned = dir.join("tuned");
    hf_ref(&[
        "lowrank",
        base.to_str().unwrap(),
        tuned.to_str().unwrap(),
        "4",
    ]);
    (base, tuned)
}

fn hf_logits(model: &Path, prompt: &str, out: &Path) -> Tensor {
    hf_ref(&[
        "logits",
        model.to_str().unwrap(),
        prompt,
        out.to_str().unwrap(),
    ]);
    Tensor::read_safetensors(out)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "logits")
        .unwrap()
        .1
}

fn our_logits(model: &Path, prompt: &str) -> Tensor {
    let policy = lm::Policy::load(model, Device::Cpu, Kind::Float).unwrap();
    let ids = policy.tokenizer.encode(prompt, true).unwrap();
    tch::no_grad(|| policy.model.forward(&Tensor::from_slice(&ids).unsqueeze(0))).squeeze_dim(0)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("extraction.json")).unwrap()).unwrap()
}

#[test]
fn extracted_adapter_reproduces_the_model_in_peft_and_here() {
    let s = scratch("adapter-exact");
    let (base, tuned) = tuned(&s);
    let ad = s.join("adapter");
    let o = adapter(&[
        "--model",
        tuned.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--rank",
        "4",
        "--dtype",
        "f32",
        "--out",
        ad.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&ad);
    assert_eq!(r["matrices"], 14, "{r}"); // 2 layers x 7 projections
    assert!(r["energy_kept"].as_f64().unwrap() > 1.0 - 1e-9, "{r}");
    assert!(r["max_relative_error"].as_f64().unwrap() < 1e-4, "{r}");

    let prompt = "<|im_start|>user\nRank Heat, Fargo and Casino.<|im_end|>\n";
    let want = hf_logits(&tuned, prompt, &s.join("tuned.safetensors"));
    let base_lg = hf_logits(&base, prompt, &s.join("base.safetensors"));
    let peft = hf_logits(&ad, prompt, &s.join("peft.safetensors"));
    let ours = our_logits(&ad, prompt);
    let scale = want.abs().max().double_value(&[]);
    let moved = max_abs_diff(&base_lg, &want) / scale;
    let (d_peft, d_ours) = (
        max_abs_diff(&peft, &want) / scale,
        max_abs_diff(&ours, &want) / scale,
    );
    eprintln!(
        "relative logit diffs: base vs tuned {moved:.3e}, peft {d_peft:.3e}, ours {d_ours:.3e}"
    );
    assert!(
        moved > 1e-2,
        "the update must matter for the test to mean anything: {moved}"
    );
    assert!(
        d_peft < 1e-4,
        "peft's logits with the adapter differ by {d_peft}"
    );
    assert!(
        d_ours < 1e-4,
        "our logits with the adapter differ by {d_ours}"
    );

    // bf16 storage (the released adapter's): close, not exact.
    let ad16 = s.join("adapter-bf16");
    let o = adapter(&[
        "--model",
        tuned.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--rank",
        "4",
        "--out",
        ad16.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r16 = report(&ad16);
    assert!(
        r16["bytes"].as_u64().unwrap() * 2 <= r["bytes"].as_u64().unwrap() + 4096,
        "bf16 is half the size: {r16} vs {r}"
    );
    let d16 = max_abs_diff(&our_logits(&ad16, prompt), &want) / scale;
    eprintln!("bf16 adapter: relative logit diff {d16:.3e}");
    assert!(d16 < 2e-2, "{d16}");
}

#[test]
fn lower_rank_keeps_less_and_says_so() {
    let s = scratch("adapter-rank2");
    let (base, tuned) = tuned(&s);
    let ad = s.join("adapter");
    let o = adapter(&[
        "--model",
        tuned.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--rank",
        "2",
        "--out",
        ad.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&ad);
    let kept = r["energy_kept"].as_f64().unwrap();
    assert!(kept > 0.4 && kept < 0.95, "rank 2 of a rank-4 update: {r}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);
}

#[test]
fn what_an_adapter_cannot_carry_is_an_error() {
    let s = scratch("adapter-errors");
    let (base, tuned) = tuned(&s);
    // A changed norm weight: not a projection, so no adapter can carry it.
    let path = tuned.join("model.safetensors");
    let mut ws = Tensor::read_safetensors(&path).unwrap();
    for (n, t) in ws.iter_mut() {
        if n == "model.norm.weight" {
            *t = &*t + 0.5;
        }
    }
    Tensor::write_safetensors(&ws, &path).unwrap();
    let ad = s.join("adapter");
    let o = adapter(&[
        "--model",
        tuned.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "--out",
        ad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("model.norm.weight") && err.contains("cannot carry"),
        "{err}"
    );
    assert!(!ad.exists(), "no partial adapter is left behind");

    // An adapter whose base does not exist, and one with a tensor no projection matches.
    let bad = s.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "base_model_name_or_path": "/nonexistent/base", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}"#,
    )
    .unwrap();
    let e = lm::Policy::load(&bad, Device::Cpu, Kind::Float)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("/nonexistent/base"), "{e:#}");
    std::fs::write(
        bad.join("adapter_config.json"),
        format!(
            r#"{{"peft_type": "LORA", "base_model_name_or_path": {:?}, "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}}"#,
            base.to_str().unwrap()
        ),
    )
    .unwrap();
    let t = vec![
        (
            "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight".to_string(),
            Tensor::zeros([2, 64], (Kind::Float, Device::Cpu)),
        ),
        (
            "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight".to_string(),
            Tensor::zeros([64, 2], (Kind::Float, Device::Cpu)),
        ),
    ];
    Tensor::write_safetensors(&t, bad.join("adapter_model.safetensors")).unwrap();
    let e = lm::Policy::load(&bad, Device::Cpu, Kind::Float)
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("layers.9") && msg.contains("match no projection"),
        "{msg}"
    );
}
