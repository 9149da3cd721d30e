//! EASE against NumPy: the same closed form (Steck 2019, Algorithm 1) computed by NumPy on
//! the same binary matrix gives the same item-item weights and the same scores.

use datasets::Event;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::process::Command;
use tools::models::ease::Ease;

#[test]
fn ease_matches_numpy() {
    let (n_users, n_items, lambda) = (60usize, 25usize, 7.5);
    let mut rng = StdRng::seed_from_u64(3);
    let seqs: Vec<Vec<Event>> = (0..n_users)
        .map(|_| {
            (0..rng.random_range(1..12))
                .map(|t| Event {
                    // Repeats are allowed: X is binary either way.
                    item: rng.random_range(0..n_items as u32),
                    rating: 4.0,
                    timestamp: t,
                })
                .collect()
        })
        .collect();
    let ease = Ease::train(&seqs, n_items, lambda).expect("EASE fits");
    let dir = testkit::scratch("ease");
    let x = dir.join("x.txt");
    let rows: Vec<String> = seqs
        .iter()
        .map(|s| {
            let mut r = vec!["0"; n_items];
            s.iter().for_each(|e| r[e.item as usize] = "1");
            r.join(" ")
        })
        .collect();
    std::fs::write(&x, rows.join("\n")).expect("writing X");
    let b_path = dir.join("b.txt");
    let py = format!(
        "import numpy as np\n\
         X = np.loadtxt('{}', ndmin=2)\n\
         G = X.T @ X + {lambda} * np.eye(X.shape[1])\n\
         P = np.linalg.inv(G)\n\
         B = P / (-np.diag(P))\n\
         np.fill_diagonal(B, 0.0)\n\
         np.savetxt('{}', B, fmt='%.9e')\n",
        x.display(),
        b_path.display()
    );
    let out = Command::new(testkit::repo_root().join(".venv/bin/python"))
        .args(["-c", &py])
        .output()
        .expect("running the venv's Python (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Vec<f64> = std::fs::read_to_string(&b_path)
        .expect("reading B")
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert_eq!(b.len(), n_items * n_items);
    let worst = b
        .iter()
        .zip(&ease.b)
        .map(|(a, &o)| (a - o as f64).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "max |B_numpy - B_ours| = {worst}");
    // Scores are rows of X B, restricted to the candidates.
    let cands: Vec<u32> = vec![3, 0, 17, 24, 9];
    for s in seqs.iter().take(10) {
        let hist: Vec<u32> = s.iter().map(|e| e.item).collect();
        let ours = ease.score(&hist, &cands);
        let mut seen = vec![false; n_items];
        hist.iter().for_each(|&h| seen[h as usize] = true);
        for (k, &c) in cands.iter().enumerate() {
            let want: f64 = (0..n_items)
                .filter(|&h| seen[h])
                .map(|h| b[h * n_items + c as usize])
                .sum();
            assert!(
                (ours[k] as f64 - want).abs() < 1e-5,
                "{} vs {want}",
                ours[k]
            );
        }
    }
    assert!(
        Ease::train(&seqs, n_items, 0.0).is_err(),
        "lambda 0 is refused"
    );
}
