//! `recthinker rl` mechanics on real MovieLens-100k with a tiny random policy: rollouts,
//! per-step metrics, checkpoints and resume.

use testkit as support;

use std::process::Command;
use support::*;

fn ok(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rl_runs_logs_checkpoints_and_resumes() {
    let dir = scratch("rl");
    let data = dir.join("ml.h5");
    prepare_ml100k(env!("CARGO_BIN_EXE_recthinker"), &data);
    let cfg = dir.join("rl.toml");
    std::fs::write(
        &cfg,
        format!(
            "run_dir = {:?}\nmodel = {:?}\ndata = {:?}\nsteps = 3\nepisodes_per_step = 2\ngroup_size = 2\nsave_every = 1\nsave_rollouts = true\neval_every = 2\neval_users = 2\n[eval_agent]\nmax_new_tokens = 12\nmax_turns = 1\n[agent]\ntemperature = 1.0\nmax_new_tokens = 12\nmax_turns = 1\n[loss]\nbeta = 0.1\n",
            dir.join("run"),
            tiny_model("qwen2"),
            data
        ),
    )
    .unwrap();
    ok(&["rl", "--config", cfg.to_str().unwrap(), "--stop-after", "2"]);
    ok(&["rl", "--config", cfg.to_str().unwrap(), "--resume"]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for key in [
        "reward_mean",
        "reward_std",
        "reward_acc",
        "reward_fmt",
        "reward_eff",
        "ndcg@10",
        "valid_rate",
        "tool_calls",
        "kl",
        "clip_fraction",
        "entropy",
        "rollout_seconds",
        "train_seconds",
    ] {
        assert!(lines[0].get(key).is_some(), "metrics miss {key}");
    }
    // Validation (greedy, 2 users) at step 2 and after the last step, not at step 1.
    for (l, expect) in lines.iter().zip([false, true, true]) {
        assert_eq!(l.get("val_ndcg@10").is_some(), expect, "{l}");
        if expect {
            let v = l["val_ndcg@10"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v));
            assert!(l["val_valid_rate"].as_f64().is_some());
        }
    }
    assert!(dir
        .join("run/checkpoints/step-000003/weights.safetensors")
        .exists());
    // save_rollouts: each step's 2 x 2 rows as trajectory lines, whose rewards and validity
    // average to that step's metrics (steps 1-2 from the first process, 3 after the resume).
    for (i, l) in lines.iter().enumerate() {
        let path = dir.join(format!("run/rollouts/step-{:06}.jsonl", i + 1));
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        assert_eq!(rows.len(), 4, "{}", path.display());
        let mean = |f: &dyn Fn(&serde_json::Value) -> f64| rows.iter().map(f).sum::<f64>() / 4.0;
        let reward = mean(&|r| r["reward"]["total"].as_f64().unwrap());
        assert!(
            (reward - l["reward_mean"].as_f64().unwrap()).abs() < 1e-9,
            "{l}"
        );
        let valid = mean(&|r| f64::from(u8::from(r["valid"].as_bool().unwrap())));
        assert!(
            (valid - l["valid_rate"].as_f64().unwrap()).abs() < 1e-9,
            "{l}"
        );
        for r in &rows {
            assert_eq!(r["step"].as_u64(), Some(i as u64 + 1));
            assert_eq!(r["episode"]["split"], "train");
            assert!(r["advantage"].is_null() || r["advantage"].is_f64(), "{r}");
        }
    }
    // TensorBoard reads back exactly metrics.jsonl, across the two processes' event files.
    support::tensorboard::assert_tensorboard_matches_metrics(&dir.join("run"));
    assert!(dir.join("run/plots/overview.png").exists());
    // Checkpoint selection: the best validated step is marked and exports.
    let best: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run/checkpoints/best.json")).unwrap(),
    )
    .unwrap();
    // Step 3 replaces step 2 when it validates higher, or equal with fewer tool calls.
    let val = |i: usize, k: &str| lines[i][k].as_f64().unwrap();
    let (v2, v3) = (val(1, "val_ndcg@10"), val(2, "val_ndcg@10"));
    let third = v3 > v2 + 1e-9
        || ((v3 - v2).abs() <= 1e-9 && val(2, "val_tool_calls") < val(1, "val_tool_calls") - 1e-9);
    let step = if third { 2 } else { 1 };
    assert_eq!(
        best["checkpoint"].as_str(),
        Some(["", "step-000002", "step-000003"][step]),
        "{best}"
    );
    assert_eq!(best["value"].as_f64(), lines[step]["val_ndcg@10"].as_f64());
    assert_eq!(
        best["tool_calls"].as_f64(),
        lines[step]["val_tool_calls"].as_f64()
    );
    ok(&[
        "export",
        "--checkpoint",
        dir.join("run").to_str().unwrap(),
        "--select",
        "best",
        "--out",
        dir.join("best-export").to_str().unwrap(),
    ]);
    assert!(dir.join("best-export/model.safetensors").exists());
}
