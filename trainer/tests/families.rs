//! Model families beyond SmolLM2's Llama: LoRA SFT of a tiny Qwen3 through the `recthinker`
//! binary, exported and loaded by transformers.

use testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;
use tch::{Device, Kind, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| {
            let msgs = serde_json::json!([
                {"role": "system", "content": "You rank movies."},
                {"role": "user", "content": format!("User {i}. Candidates: 1. Heat 2. Fargo 3. Casino")},
                {"role": "assistant", "content": "<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"},
                {"role": "tool", "content": format!("Fargo (1996), rated {}", i % 5 + 1)},
                {"role": "assistant", "content": format!("<think>Done.</think>\n<answer>{}, 1, 3</answer>", i % 2 + 2)}
            ]);
            serde_json::json!({"messages": msgs}).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Logits of `prompt` under the model in `dir`: (ours, transformers').
fn logits_both(dir: &Path, prompt: &str, scratch_dir: &Path) -> (Tensor, Tensor) {
    let theirs_path = scratch_dir.join("theirs.safetensors");
    hf_ref(&[
        "logits",
        dir.to_str().unwrap(),
        prompt,
        theirs_path.to_str().unwrap(),
    ]);
    let theirs = Tensor::read_safetensors(&theirs_path)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "logits")
        .unwrap()
        .1;
    let policy = lm::Policy::load(dir, Device::Cpu, Kind::Float).unwrap();
    let ids = policy.tokenizer.encode(prompt, true).unwrap();
    let ours = tch::no_grad(|| policy.model.forward(&Tensor::from_slice(&ids).unsqueeze(0)))
        .squeeze_dim(0);
    (ours, theirs)
}

#[test]
fn lora_trained_qwen3_exports_to_transformers() {
    let dir = scratch("qwen3-lora");
    let model = tiny_model("qwen3");
    let cfg = dir.join("q3.toml");
    std::fs::write(
        &cfg,
        format!(
            "run_dir = {:?}\nmodel = {model:?}\ntrain_file = {:?}\nseed = 3\nsteps = 3\nbatch_size = 2\nmicro_batch = 2\nmax_len = 512\nsave_every = 3\n[optim]\nlr = 0.01\nwarmup_steps = 1\n[lora]\nrank = 4\nalpha = 8.0\ntarget_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]\n",
            dir.join("run"),
            conversations(&dir)
        ),
    )
    .unwrap();
    run(bin().args(["sft", "--config", cfg.to_str().unwrap()]));
    let out = dir.join("hf");
    run(bin().args([
        "export",
        "--checkpoint",
        dir.join("run").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));

    // The export holds exactly the base model's tensor names (q_norm/k_norm included, no
    // adapters), and the Qwen3 config and chat template.
    let names = |d: &Path| {
        let mut v: Vec<String> = Tensor::read_safetensors(d.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        v.sort();
        v
    };
    let exported = names(&out);
    assert_eq!(exported, names(&model));
    assert!(exported.contains(&"model.layers.1.self_attn.q_norm.weight".to_string()));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen3");
    assert_eq!(
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        template("qwen3")
    );

    let prompt = "User 1. Candidates: 1. Heat 2. Fargo";
    let (ours, theirs) = logits_both(&out, prompt, &dir);
    let abs = max_abs_diff(&ours, &theirs);
    let rel = abs / theirs.abs().max().double_value(&[]);
    eprintln!("exported qwen3: max |logit diff| vs transformers {abs:.3e}, relative {rel:.3e}");
    assert!(
        rel <= 1e-4,
        "exported logits differ from transformers by {rel} (relative)"
    );

    // And training changed the model: every adapted projection moved.
    let base = lm::Policy::load(&model, Device::Cpu, Kind::Float).unwrap();
    let ids = base.tokenizer.encode(prompt, true).unwrap();
    let before =
        tch::no_grad(|| base.model.forward(&Tensor::from_slice(&ids).unsqueeze(0))).squeeze_dim(0);
    assert!(max_abs_diff(&ours, &before) > 1e-3);
    let read = |d: &Path| -> std::collections::BTreeMap<String, Tensor> {
        Tensor::read_safetensors(d.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (a, b) = (read(&model), read(&out));
    for proj in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ] {
        let n = format!("model.layers.0.{proj}.weight");
        assert!(max_abs_diff(&a[&n], &b[&n]) > 0.0, "{n} unchanged by LoRA");
    }
    let n = "model.layers.0.self_attn.q_norm.weight";
    assert_eq!(max_abs_diff(&a[n], &b[n]), 0.0, "{n} is not a LoRA target");
}
