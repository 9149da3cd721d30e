//! What the fault tests share (`faults.rs`, `kill_resume.rs`, `nonfinite.rs`): running the
//! CLI, reading checkpoints and metrics, tiny SFT and GRPO configs and a small synthetic store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use tch::Tensor;
use testkit::{scratch, tiny_model};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn run(cmd: &str, cfg: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args([cmd, "--config", s(cfg)]).args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running recthinker")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(o: Output) -> String {
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    e
}

pub fn failed(o: Output) -> String {
    let e = stderr(&o);
    assert!(!o.status.success(), "expected a failure:\n{e}");
    e
}

/// The `error: ...` line of a failed run's stderr.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("")
}

pub fn ck(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(format!("checkpoints/step-{step:06}"))
}

/// Tensors of a checkpoint file, by name.
pub fn tensors(file: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(file).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Whether two checkpoint files hold bit-identical tensors of the same names.
pub fn same_tensors(a: &Path, b: &Path) -> bool {
    let (ta, tb) = (tensors(a), tensors(b));
    ta.len() == tb.len()
        && ta
            .iter()
            .zip(&tb)
            .all(|((na, a), (nb, b))| na == nb && a.equal(b))
}

/// Metric lines without their timings.
pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| !k.ends_with("seconds"));
            v
        })
        .collect()
}

pub fn steps_logged(run_dir: &Path) -> Vec<u64> {
    metrics(run_dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------
// SFT runs: a tiny random Llama on six short conversations.

pub fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let mut lines = Vec::new();
    for i in 0..6 {
        let msgs = serde_json::json!([
            {"role": "system", "content": "You rank movies."},
            {"role": "user", "content": format!("User {i}. Candidates: 1. Heat 2. Fargo 3. Casino")},
            {"role": "assistant", "content": "<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"},
            {"role": "tool", "content": format!("<tool_response>\nFargo (1996), rated {}\n</tool_response>", i % 5 + 1)},
            {"role": "assistant", "content": format!("<answer>{}, 1, 3</answer>", i % 2 + 2)}
        ]);
        lines.push(serde_json::json!({"messages": msgs}).to_string());
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// An SFT config writing into `dir/name` (a checkpoint every step, all kept).
pub fn sft_config(dir: &Path, name: &str, lora: bool, steps: usize, optim: &str) -> PathBuf {
    let mut text = format!(
        "run_dir = {:?}\nmodel = {:?}\ntrain_file = {:?}\nseed = 3\nsteps = {steps}\nbatch_size = 2\nmicro_batch = 2\nmax_len = 256\nsave_every = 1\nkeep_checkpoints = 0\nreport_to = [\"jsonl\"]\n[optim]\nlr = 0.01\nwarmup_steps = 1\n{optim}\n",
        dir.join(name),
        tiny_model("llama"),
        conversations(dir)
    );
    if lora {
        text.push_str("[lora]\nrank = 4\nalpha = 8.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n");
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------------------
// GRPO runs: a tiny random Qwen2 on a small synthetic store. A random model never answers,
// so every reward is the same: groups are kept anyway (advantage 0) and the gradient comes
// from the KL to the reference, which weight decay moves the policy away from after the
// first step. Every step thus rolls out with new weights, backpropagates through the policy
// and updates weights and moments.

/// The synthetic store (40 users, 80 items), once per test process.
pub fn store() -> &'static PathBuf {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| {
        let path = scratch("faults-store").keep().join("store.h5");
        testkit::world::synthetic_store(&path, 3);
        path
    })
}

pub fn grpo_config(dir: &Path, name: &str, steps: usize, keep: usize, optim: &str) -> PathBuf {
    let text = format!(
        "run_dir = {:?}\nmodel = {:?}\ndata = {:?}\nseed = 5\nsteps = {steps}\nepisodes_per_step = 2\ngroup_size = 2\nsave_every = 1\nkeep_checkpoints = {keep}\nkeep_zero_variance_groups = true\n[agent]\ntemperature = 1.0\nmax_new_tokens = 16\nmax_turns = 1\n[loss]\nbeta = 0.5\n[optim]\nlr = 0.02\nweight_decay = 0.5\nwarmup_steps = 1\n{optim}\n",
        dir.join(name),
        tiny_model("qwen2"),
        store()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}
