//! `recthinker data`, `tool` and `baseline` on real MovieLens-100k.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn recthinker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args(args)
        .output()
        .expect("running recthinker")
}

fn ok(args: &[&str]) -> String {
    let out = recthinker(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn scratch() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(format!(
            "target/test-scratch/data-cli-{}",
            std::process::id()
        ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn prepared(name: &str) -> PathBuf {
    let out = scratch().join(name);
    ok(&[
        "data",
        "prepare",
        "--dataset",
        "ml-100k",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "5",
        "--sasrec-epochs",
        "2",
        "--bpr-epochs",
        "2",
    ]);
    out
}

fn file() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| prepared("a.h5"))
}

#[test]
fn prepare_is_reproducible_and_episodes_print_raw_ids() {
    let a = file();
    let b = prepared("b.h5");
    for split in ["train", "valid", "test"] {
        let ea = ok(&[
            "data",
            "episodes",
            a.to_str().unwrap(),
            "--split",
            split,
            "--subset",
            "all",
        ]);
        assert_eq!(
            ea,
            ok(&[
                "data",
                "episodes",
                b.to_str().unwrap(),
                "--split",
                split,
                "--subset",
                "all"
            ])
        );
    }
    let dense = ok(&[
        "data",
        "episodes",
        a.to_str().unwrap(),
        "--split",
        "test",
        "--subset",
        "dense",
    ]);
    let lines: Vec<serde_json::Value> = dense
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 100);
    for l in &lines {
        let cands = l["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 10);
        assert!(cands.contains(&l["target"]));
        assert!(!l["history"].as_array().unwrap().contains(&l["target"]));
    }
    // Same seed, same models: baselines agree exactly.
    for m in ["bpr", "sasrec", "itemknn"] {
        let ra = ok(&[
            "baseline",
            "--data",
            a.to_str().unwrap(),
            "--method",
            m,
            "--subset",
            "dense",
        ]);
        let rb = ok(&[
            "baseline",
            "--data",
            b.to_str().unwrap(),
            "--method",
            m,
            "--subset",
            "dense",
        ]);
        assert_eq!(ra, rb, "{m}");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&["data", "stats", a.to_str().unwrap()])).unwrap();
    assert_eq!(stats["users"], 943);
    assert_eq!(stats["interactions"], 100_000);
}

#[test]
fn baseline_writes_json_and_random_is_near_its_expectation() {
    let out = scratch().join("random.json");
    ok(&[
        "baseline",
        "--data",
        file().to_str().unwrap(),
        "--method",
        "random",
        "--subset",
        "all",
        "--out",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["ndcg@1", "ndcg@5", "ndcg@10", "users"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    // 943 users: the mean of a uniform rank is within a few points of 0.4544.
    assert!(
        (v["ndcg@10"].as_f64().unwrap() - 0.4544).abs() < 0.03,
        "{v}"
    );
    assert!((v["ndcg@1"].as_f64().unwrap() - 0.1).abs() < 0.03, "{v}");
}

#[test]
fn tool_command_prints_observations_and_errors() {
    let f = file().to_str().unwrap().to_string();
    let text = ok(&[
        "tool",
        "--data",
        &f,
        "--episode",
        "test:sparse:3",
        "--call",
        r#"{"name": "item_info", "arguments": {"candidate": 1}}"#,
    ]);
    assert!(text.starts_with("Candidate 1:"), "{text}");
    let text = ok(&[
        "tool",
        "--data",
        &f,
        "--call",
        r#"{"name": "nope", "arguments": {}}"#,
    ]);
    assert!(text.contains("unknown tool"), "{text}");
    let bad = recthinker(&[
        "tool",
        "--data",
        &f,
        "--episode",
        "test:dense:1000",
        "--call",
        "{}",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("only 100 episodes"));
    let bad = recthinker(&["baseline", "--data", "/nonexistent.h5", "--method", "pop"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.h5"));
}
