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

/// A failed `data prepare` leaves no store and no temporary file (issue 14): a corrupt
/// ratings file fails before anything is written, naming file and line; an output path that
/// cannot be written (a directory) fails after the models are trained and leaves nothing
/// beside it.
#[test]
fn a_failed_prepare_leaves_nothing_behind() {
    let root = scratch().join("failed-prepare");
    let _ = std::fs::remove_dir_all(&root);
    let input = root.join("in");
    let out_dir = root.join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut ratings = String::new();
    for u in 1..=30 {
        for k in 0..12 {
            let item = (u * 7 + k * 3) % 40 + 1;
            ratings.push_str(&format!(
                "{u}\t{item}\t{}\t{}\n",
                (u + k) % 5 + 1,
                978_300_000 + k * 86_400 + u
            ));
        }
    }
    let prepare = |out: &Path| {
        recthinker(&[
            "data",
            "prepare",
            "--dataset",
            "ml-100k",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sasrec-epochs",
            "1",
            "--bpr-epochs",
            "1",
        ])
    };
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    // A non-numeric rating on line 7.
    let bad: String = ratings
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 6 {
                let f: Vec<&str> = l.split('\t').collect();
                format!("{}\t{}\tfive\t{}\n", f[0], f[1], f[3])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(input.join("u.data"), bad).unwrap();
    let out = out_dir.join("store.h5");
    let o = prepare(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("u.data:7") && err.contains("rating"), "{err}");
    assert!(listing(&out_dir).is_empty(), "{:?}", listing(&out_dir));
    // Good input, but the output path is a directory: the rename at the end fails.
    std::fs::write(input.join("u.data"), &ratings).unwrap();
    let blocked = out_dir.join("blocked.h5");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let o = prepare(&blocked);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "writing over a directory succeeded");
    assert!(err.contains("blocked.h5"), "{err}");
    assert_eq!(listing(&out_dir), vec!["blocked.h5"]);
    assert_eq!(listing(&blocked), vec!["inside"]);
    // The same input into a file path works.
    let o = prepare(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listing(&out_dir), vec!["blocked.h5", "store.h5"]);
    let _ = std::fs::remove_dir_all(&root);
}
