//! `recthinker eval` end to end: real MovieLens-100k, SmolLM2-135M-Instruct, short limits.

use testkit as support;

use std::path::Path;
use std::process::Command;
use support::{prepare_ml100k, scratch};

fn recthinker(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args(args)
        .output()
        .expect("running recthinker");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn eval_runs_scores_and_saves_recomputable_trajectories() {
    let dir = scratch("eval");
    let data = dir.join("ml.h5");
    prepare_ml100k(env!("CARGO_BIN_EXE_recthinker"), &data);
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("checkpoints/base/SmolLM2-135M-Instruct");
    for no_tools in [false, true] {
        let report = dir.join(format!("report-{no_tools}.json"));
        let traj = dir.join(format!("traj-{no_tools}.jsonl"));
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--subset",
            "sparse",
            "--limit-users",
            "3",
            "--samples",
            "2",
            "--temperature",
            "1.0",
            "--max-new-tokens",
            "40",
            "--max-turns",
            "2",
            "--out",
            report.to_str().unwrap(),
            "--trajectories",
            traj.to_str().unwrap(),
            "--with-tokens",
        ];
        if no_tools {
            args.push("--no-tools");
        }
        recthinker(&args);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        for key in [
            "ndcg@1",
            "ndcg@5",
            "ndcg@10",
            "valid_rate",
            "mean_tool_calls",
            "tool_calls",
            "bad_calls",
            "episodes",
            "tokens_generated",
            "seconds",
        ] {
            assert!(r.get(key).is_some(), "report misses {key}");
        }
        assert_eq!(r["episodes"], 6);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&traj)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        let mut generated = 0;
        for t in &lines {
            let (ids, mask, lps) = (
                t["ids"].as_array().unwrap(),
                t["mask"].as_array().unwrap(),
                t["logprobs"].as_array().unwrap(),
            );
            assert_eq!(ids.len(), mask.len());
            assert_eq!(ids.len(), lps.len());
            let sampled = mask.iter().filter(|m| m.as_u64() == Some(1)).count();
            assert_eq!(sampled as u64, t["tokens"]["generated"].as_u64().unwrap());
            generated += sampled;
            // Every sampled token has a real log-prob; prompt and forced tokens carry 0.
            for (m, lp) in mask.iter().zip(lps) {
                let lp = lp.as_f64().unwrap();
                if m.as_u64() == Some(1) {
                    assert!(lp <= 0.0 && lp.is_finite())
                } else {
                    assert_eq!(lp, 0.0)
                }
            }
            // Valid, or invalid for a stated reason.
            let valid = t["valid"].as_bool().unwrap();
            assert!(
                valid || t["invalid_reason"].as_str().is_some_and(|s| !s.is_empty()),
                "{t}"
            );
            // The reward recomputes from the saved trajectory.
            let last = t["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_string();
            let calls = t["tool_calls"].as_array().unwrap();
            let bad = calls.iter().filter(|c| c["ok"] == false).count();
            let target = t["episode"]["target_index"].as_u64().unwrap() as usize - 1;
            let rank = rollout::protocol::parse_answer(&last, 10)
                .ok()
                .and_then(|r| reward::rank_in(&r, target));
            let outcome = reward::Outcome {
                valid: rank.is_some() && t["end"] == "answer",
                rank,
                tool_calls: calls.len(),
                bad_calls: bad,
            };
            let parts = reward::reward(&outcome, &reward::RewardConfig::default());
            assert!(
                (parts.total - t["reward"]["total"].as_f64().unwrap()).abs() < 1e-12,
                "{t}"
            );
            if no_tools {
                assert!(calls.iter().all(|c| c["ok"] == false), "tools are disabled");
            }
        }
        assert_eq!(generated as u64, r["tokens_generated"].as_u64().unwrap());
    }
}
