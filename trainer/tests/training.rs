//! SFT, checkpoints, resume, kill -9 and export on a tiny random model.

use testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::tensorboard::assert_tensorboard_matches_metrics;
use support::*;
use tch::{Device, Kind, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
}

fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("sft.jsonl");
    let mut lines = Vec::new();
    for i in 0..6 {
        let msgs = serde_json::json!([
            {"role": "system", "content": "You rank movies."},
            {"role": "user", "content": format!("User {i}. Candidates: 1. Heat 2. Fargo 3. Casino")},
            {"role": "assistant", "content": "<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"},
            {"role": "tool", "content": format!("<tool_response>\nFargo (1996), rated {}\n</tool_response>", i % 5 + 1)},
            {"role": "assistant", "content": format!("<think>Done.</think>\n<answer>{}, 1, 3</answer>", i % 2 + 2)}
        ]);
        lines.push(serde_json::json!({"messages": msgs}).to_string());
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn config(dir: &Path, name: &str, lora: bool, save_every: usize) -> PathBuf {
    config_steps(dir, name, lora, save_every, 6)
}

fn config_steps(dir: &Path, name: &str, lora: bool, save_every: usize, steps: usize) -> PathBuf {
    let model = tiny_model("llama");
    let mut text = format!(
        "run_dir = {:?}\nmodel = {:?}\ntrain_file = {:?}\nseed = 3\nsteps = {steps}\nbatch_size = 3\nmicro_batch = 2\nmax_len = 512\nsave_every = {save_every}\n[optim]\nlr = 0.01\nwarmup_steps = 2\n",
        dir.join(name), model, conversations(dir)
    );
    if lora {
        text.push_str("[lora]\nrank = 4\nalpha = 8.0\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n");
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn sft(cfg: &Path, extra: &[&str]) {
    let out = bin()
        .args(["sft", "--config", cfg.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sft` with stderr going to a file (as `recthinker sft ... 2> train.log` would) and
/// returns what it wrote there.
fn sft_logged(cfg: &Path, log: &Path) -> String {
    let file = std::fs::File::create(log).unwrap();
    let status = bin()
        .args(["sft", "--config", cfg.to_str().unwrap()])
        .stderr(file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{text}");
    text
}

fn weights(ckpt: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(ckpt.join("weights.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_run_exactly() {
    for lora in [true, false] {
        let dir = scratch(if lora { "resume-lora" } else { "resume-full" });
        let (a, b) = (config(&dir, "a", lora, 2), config(&dir, "b", lora, 2));
        // Without a terminal, progress is one plain line per step.
        let log = sft_logged(&a, &dir.join("a.log"));
        for step in 1..=6 {
            let want = format!("sft {step}/6 steps loss ");
            assert!(
                log.lines().any(|l| l.starts_with(&want)),
                "{want:?} not in\n{log}"
            );
        }
        assert!(!log.contains('\r'), "no bar redraws in a log file:\n{log}");
        sft(&b, &["--stop-after", "3"]);
        sft(&b, &["--resume"]);
        let (ra, rb) = (dir.join("a"), dir.join("b"));
        // TensorBoard reads back exactly metrics.jsonl; run b resumed from step 2 after
        // writing step 3, in a second event file, and step 3 appears once.
        assert_eq!(assert_tensorboard_matches_metrics(&ra), 6 * 6); // loss, lr, grad_norm, tokens, pad_fraction, seconds
        assert_eq!(assert_tensorboard_matches_metrics(&rb), 6 * 6);
        assert_eq!(std::fs::read_dir(rb.join("tb")).unwrap().count(), 2);
        let m = metrics(&ra);
        assert_eq!(m.len(), 6);
        assert!(
            m[5]["loss"].as_f64().unwrap() < m[0]["loss"].as_f64().unwrap(),
            "loss falls: {m:?}"
        );
        assert_eq!(m, metrics(&rb), "metrics after resume");
        let (wa, wb) = (
            weights(&ra.join("checkpoints/step-000006")),
            weights(&rb.join("checkpoints/step-000006")),
        );
        assert_eq!(wa.len(), wb.len());
        for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na} differs after resume");
        }
        if lora {
            assert!(
                wa.iter().all(|(n, _)| n.contains("lora_")),
                "LoRA checkpoints hold adapters only"
            );
        }
    }
}

#[test]
fn kill_during_checkpointing_leaves_a_loadable_checkpoint() {
    let dir = scratch("kill");
    // A checkpoint every step (~40 MB each), so kills land during writes.
    let cfg = config_steps(&dir, "k", false, 1, 60);
    let run = dir.join("k");
    let mut seen = std::collections::HashSet::new();
    let latest = || std::fs::read_to_string(run.join("checkpoints/latest")).ok();
    // Each run is killed a little after it published a new checkpoint (so at varying points
    // of the next step or of its checkpoint write), however slow the machine is.
    for delay_ms in [0u64, 40, 90, 150, 220] {
        let before = latest();
        let mut child = bin()
            .args(["sft", "--config", cfg.to_str().unwrap(), "--resume"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let waited = std::time::Instant::now();
        while latest() == before && waited.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if let Some(name) = latest() {
            let ck = run.join("checkpoints").join(name.trim());
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).unwrap())
                    .unwrap();
            assert!(state["step"].as_u64().unwrap() >= 1);
            assert!(!weights(&ck).is_empty());
            assert!(Tensor::read_safetensors(ck.join("optimizer.safetensors")).is_ok());
            seen.insert(name);
        }
    }
    assert!(
        seen.len() >= 2,
        "the kills should land at different points: {seen:?}"
    );
    sft(&cfg, &["--resume"]);
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step-000060"
    );
}

#[test]
fn exported_models_match_transformers() {
    for lora in [true, false] {
        let dir = scratch(if lora { "export-lora" } else { "export-full" });
        let cfg = config(&dir, "e", lora, 3);
        sft(&cfg, &[]);
        let out = dir.join("hf");
        let o = bin()
            .args([
                "export",
                "--checkpoint",
                dir.join("e").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "generation_config.json",
        ] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        let prompt = "User 1. Candidates: 1. Heat 2. Fargo";
        let theirs_path = dir.join("theirs.safetensors");
        hf_ref(&[
            "logits",
            out.to_str().unwrap(),
            prompt,
            theirs_path.to_str().unwrap(),
        ]);
        let theirs = Tensor::read_safetensors(&theirs_path)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == "logits")
            .unwrap()
            .1;
        let policy = lm::Policy::load(&out, Device::Cpu, Kind::Float).unwrap();
        let ids = policy.tokenizer.encode(prompt, true).unwrap();
        let ours = tch::no_grad(|| policy.model.forward(&Tensor::from_slice(&ids).unsqueeze(0)))
            .squeeze_dim(0);
        let diff = max_abs_diff(&ours, &theirs);
        assert!(
            diff <= 1e-4,
            "exported logits differ from transformers by {diff}"
        );
        // And training changed the model.
        let base = lm::Policy::load(&tiny_model("llama"), Device::Cpu, Kind::Float).unwrap();
        let before = tch::no_grad(|| base.model.forward(&Tensor::from_slice(&ids).unsqueeze(0)))
            .squeeze_dim(0);
        assert!(max_abs_diff(&ours, &before) > 1e-3);
    }
}

#[test]
fn masked_head_logprobs_equal_the_full_softmax() {
    let policy = lm::Policy::load(&tiny_model("qwen2"), Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::from_slice(&[5i64, 80, 900, 33, 7, 1000, 4, 4, 61, 2, 0, 0]).view([2, 6]);
    let mask = Tensor::from_slice(&[0u8, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0]).view([2, 6]);
    let lp = trainer::logprobs::token_logprobs(&policy.model, &ids, &mask);
    let full = tch::no_grad(|| policy.model.forward(&ids))
        .narrow(1, 0, 5)
        .log_softmax(-1, Kind::Float)
        .gather(2, &ids.narrow(1, 1, 5).unsqueeze(-1), false)
        .squeeze_dim(-1);
    let m = mask.narrow(1, 1, 5).to_kind(Kind::Float);
    assert!(max_abs_diff(&(lp.dense.detach() * &m), &(full * &m)) < 1e-5);
}

/// Every trainable variable's gradient, copied.
fn trainable_grads(model: &lm::Model) -> Vec<Tensor> {
    model
        .vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad().copy())
        .collect()
}

fn zero_trainable_grads(model: &lm::Model) {
    for mut v in model.vs.trainable_variables() {
        v.zero_grad();
    }
}

/// The largest gradient difference, relative to each tensor's largest entry of `want`.
fn worst_relative_diff(want: &[Tensor], got: &[Tensor]) -> f64 {
    want.iter().zip(got).fold(0.0f64, |w, (a, b)| {
        w.max(max_abs_diff(a, b) / (1e-3 + a.abs().max().double_value(&[])))
    })
}

#[test]
fn shared_prompt_logprobs_and_gradients_equal_full_rows() {
    for family in ["qwen2", "llama"] {
        let policy = lm::Policy::load(&tiny_model(family), Device::Cpu, Kind::Float).unwrap();
        let model = &policy.model;
        let prompt = [5i64, 80, 900, 33, 7];
        let rest = [
            [1000i64, 4, 4, 61, 2],
            [17, 250, 3, 0, 0],
            [9, 9, 400, 12, 0],
        ];
        let rest_mask = [[1u8, 1, 0, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]];
        let ids: Vec<i64> = rest
            .iter()
            .flat_map(|r| prompt.iter().chain(r).copied())
            .collect();
        let mask: Vec<u8> = rest_mask
            .iter()
            .flat_map(|m| [0u8; 5].iter().chain(m).copied())
            .collect();
        let (ids, mask) = (
            Tensor::from_slice(&ids).view([3, 10]),
            Tensor::from_slice(&mask).view([3, 10]),
        );
        let rest_t = Tensor::from_slice(rest.as_flattened()).view([3, 5]);
        let rest_m = Tensor::from_slice(rest_mask.as_flattened()).view([3, 5]);
        let grads = |loss: Tensor| -> Vec<Tensor> {
            zero_trainable_grads(model);
            loss.backward();
            trainable_grads(model)
        };
        // A loss with different weights per position, so every gradient path matters.
        let w = Tensor::arange(15, (Kind::Float, Device::Cpu)).view([3, 5]) / 7.0 + 0.5;
        let full = trainer::logprobs::token_logprobs(model, &ids, &mask);
        let full_rest = full.dense.narrow(1, 4, 5);
        // Each row continues the prompt over its own length (5, 3 and 4 tokens: the rest is
        // padding, never computed).
        let shared = trainer::logprobs::group_token_logprobs(
            model,
            &Tensor::from_slice(&prompt),
            &rest_t,
            &rest_m,
            &[5, 3, 4],
        );
        assert!(max_abs_diff(&full_rest.detach(), &shared.dense.detach()) < 1e-5);
        assert!((full.entropy - shared.entropy).abs() < 1e-5);
        assert!(full.dense.narrow(1, 0, 4).abs().max().double_value(&[]) == 0.0);
        let g_full = grads((&full_rest * &w).sum(Kind::Float));
        let g_shared = grads((&shared.dense * &w).sum(Kind::Float));
        assert!(!g_full.is_empty());
        let worst = worst_relative_diff(&g_full, &g_shared);
        assert!(
            worst < 1e-4,
            "{family}: relative gradient difference {worst}"
        );
    }
}

#[test]
fn prefix_shared_across_micro_batches_gives_the_full_rows_gradients() {
    // SFT's `share_prefix`: the prefix runs forward once, each row continues detached copies
    // of it in its own micro-batch (forward and backward), and the prefix's gradient is
    // carried back once at the end.
    for family in ["qwen2", "llama"] {
        let policy = lm::Policy::load(&tiny_model(family), Device::Cpu, Kind::Float).unwrap();
        let model = &policy.model;
        let prompt = [5i64, 80, 900, 33, 7];
        let rests: [&[i64]; 3] = [&[1000, 4, 4, 61, 2], &[17, 250, 3], &[9, 9, 400, 12]];
        let masks: [&[u8]; 3] = [&[1, 1, 0, 1, 1], &[1, 1, 1], &[0, 1, 1, 1]];
        let weight = |row: usize, c: usize| (row * 5 + c) as f64 / 7.0 + 0.5;
        // Full rows, one micro-batch each.
        zero_trainable_grads(model);
        for (row, (rest, m)) in rests.iter().zip(masks).enumerate() {
            let ids: Vec<i64> = prompt.iter().chain(rest.iter()).copied().collect();
            let mask: Vec<u8> = [0u8; 5].iter().chain(m).copied().collect();
            let n = ids.len() as i64;
            let lp = trainer::logprobs::token_logprobs(
                model,
                &Tensor::from_slice(&ids).view([1, n]),
                &Tensor::from_slice(&mask).view([1, n]),
            );
            let w: Vec<f32> = (0..rest.len()).map(|c| weight(row, c) as f32).collect();
            let w = Tensor::from_slice(&w).view([1, -1]);
            (lp.dense.narrow(1, 4, rest.len() as i64) * w)
                .sum(Kind::Float)
                .backward();
        }
        let g_full = trainable_grads(model);
        // Shared prefix.
        zero_trainable_grads(model);
        let prefix = trainer::logprobs::Prefix::forward(model, &Tensor::from_slice(&prompt));
        let leaves = prefix.detached();
        for (row, (rest, m)) in rests.iter().zip(masks).enumerate() {
            let lp = trainer::logprobs::continued_logprobs(
                model,
                &leaves,
                &Tensor::from_slice(rest).view([1, -1]),
                &Tensor::from_slice(m).view([1, -1]),
            );
            let w: Vec<f32> = (0..rest.len()).map(|c| weight(row, c) as f32).collect();
            (lp.dense * Tensor::from_slice(&w).view([1, -1]))
                .sum(Kind::Float)
                .backward();
        }
        let g_rows_only = trainable_grads(model);
        prefix.backward_from(&leaves);
        let g_shared = trainable_grads(model);
        assert!(!g_full.is_empty());
        let diff = worst_relative_diff(&g_full, &g_shared);
        assert!(diff < 1e-4, "{family}: relative gradient difference {diff}");
        // The prefix's share of the gradient is not negligible: without `backward_from` the
        // comparison above fails.
        let missing = worst_relative_diff(&g_full, &g_rows_only);
        assert!(
            missing > 1e-2,
            "{family}: the prefix carried only {missing}"
        );
    }
}
