//! NDCG against scikit-learn's `ndcg_score` on random cases.

use rand::{Rng, SeedableRng};
use std::process::Command;

#[test]
fn ndcg_matches_scikit_learn() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut cases = Vec::new();
    for _ in 0..200 {
        let n = rng.random_range(2..15);
        let rel: Vec<f64> = (0..n).map(|_| rng.random_range(0..4) as f64).collect();
        let scores: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let k = rng.random_range(1..=n);
        cases.push(serde_json::json!({"rel": rel, "scores": scores, "k": k}));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let script = "import json,sys\nfrom sklearn.metrics import ndcg_score\ncases=json.load(sys.stdin)\nprint(json.dumps([ndcg_score([c['rel']],[c['scores']],k=c['k']) if any(c['rel']) else 0.0 for c in cases]))";
    let mut child = Command::new(root.join(".venv/bin/python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("venv python (run scripts/setup.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&cases).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    for (c, t) in cases.iter().zip(theirs) {
        let rel: Vec<f64> = serde_json::from_value(c["rel"].clone()).unwrap();
        let scores: Vec<f64> = serde_json::from_value(c["scores"].clone()).unwrap();
        let ours = reward::ndcg_score(&rel, &scores, c["k"].as_u64().unwrap() as usize);
        assert!((ours - t).abs() < 1e-9, "{c}: ours {ours} sklearn {t}");
    }
    // And the single-relevant-item form used for episodes.
    let ours = reward::ndcg_at_rank(3, 10);
    assert!((ours - reward::ndcg_score(&[0.0, 0.0, 1.0], &[0.9, 0.8, 0.7], 10)).abs() < 1e-12);
}
