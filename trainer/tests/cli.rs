//! The `recthinker` binary end to end.

use testkit as support;

use std::process::Command;
use support::*;
use tch::Tensor;

fn recthinker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args(args)
        .output()
        .expect("running recthinker")
}

#[test]
fn logits_command_matches_transformers() {
    let model = tiny_model("qwen2");
    let dir = scratch("cli-logits");
    let (ours, theirs) = (dir.join("ours.safetensors"), dir.join("theirs.safetensors"));
    let prompt = "Movies: Heat, Fargo";
    let out = recthinker(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--out",
        ours.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hf_ref(&[
        "logits",
        model.to_str().unwrap(),
        prompt,
        theirs.to_str().unwrap(),
    ]);
    let get = |p: &std::path::Path| {
        Tensor::read_safetensors(p)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "logits")
            .unwrap()
            .1
    };
    let (a, b) = (get(&ours), get(&theirs));
    assert_eq!(a.size(), b.size());
    assert!(max_abs_diff(&a, &b) <= 1e-4);
}

#[test]
fn generate_prints_only_the_completion() {
    let out = recthinker(&[
        "generate",
        "--model",
        base_model().to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(
        !text.contains("capital of France?\n"),
        "the prompt is not echoed: {text}"
    );
}

#[test]
fn bad_arguments_give_clear_errors() {
    let model = tiny_model("llama");
    let out = recthinker(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--device",
        "tpu",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device `tpu`"));
    let out = recthinker(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no config.json"));
    let help = recthinker(&["generate", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("greedy"));
}
