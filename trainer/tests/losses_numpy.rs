//! SFT and GRPO losses against an independent NumPy computation on fixed inputs.

use std::process::Command;
use tch::{Kind, Tensor};
use trainer::algos::{AdvantageEstimator, Aggregation};
use trainer::losses::{grpo_loss, sft_loss, GrpoLossConfig};

const NUMPY: &str = r#"
import json, sys
import numpy as np
d = json.load(sys.stdin)
new, old, ref, adv, mask = (np.array(d[k], dtype=np.float64) for k in ["new", "old", "ref", "adv", "mask"])
out = {}
for agg in ["token_mean", "sequence_mean", "dr_grpo"]:
    for beta in [0.0, 0.05]:
        ratio = np.exp(new - old)
        a = adv[:, None]
        surr = np.minimum(ratio * a, np.clip(ratio, 1 - d["eps_low"], 1 + d["eps_high"]) * a)
        per = -surr
        if beta > 0:
            diff = ref - new
            per = per + beta * (np.exp(diff) - diff - 1)
        if agg == "token_mean":
            v = (per * mask).sum() / mask.sum()
        elif agg == "sequence_mean":
            v = ((per * mask).sum(1) / mask.sum(1)).mean()
        else:
            v = (per * mask).sum() / (mask.shape[0] * d["dr_len"])
        out[f"{agg}/{beta}"] = v
out["sft"] = -(new * mask).sum() / mask.sum()
r = np.array(d["rewards"]).reshape(-1, d["g"])
mean, std = r.mean(1, keepdims=True), r.std(1, ddof=1, keepdims=True)
z = np.where(std < 1e-9, np.nan, (r - mean) / (std + 1e-6))
out["adv_z"] = [None if np.isnan(x) else x for x in z.reshape(-1)]
out["adv_mean"] = [None if s < 1e-9 else x for x, s in zip((r - mean).reshape(-1), np.repeat(std.reshape(-1), d["g"]))]
print(json.dumps(out))
"#;

#[test]
fn losses_match_numpy() {
    tch::manual_seed(7);
    let (b, t) = (4i64, 6i64);
    let new = Tensor::randn([b, t], (Kind::Double, tch::Device::Cpu)) * 0.3 - 2.0;
    let old = &new + Tensor::randn([b, t], (Kind::Double, tch::Device::Cpu)) * 0.3;
    let reference = &new + Tensor::randn([b, t], (Kind::Double, tch::Device::Cpu)) * 0.2;
    let adv = Tensor::from_slice(&[1.5f64, -0.7, 0.2, -1.1]);
    let mask = Tensor::from_slice(&[
        1u8, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0,
    ])
    .view([b, t]);
    let rewards = [1.0, 0.5, 0.5, 0.2, 0.3, 0.3, 0.3, 0.3, -1.0, 0.9, 0.1, 0.4];
    let list = |x: &Tensor| -> Vec<Vec<f64>> {
        Vec::<Vec<f64>>::try_from(&x.to_kind(Kind::Double)).unwrap()
    };
    let input = serde_json::json!({"new": list(&new), "old": list(&old), "ref": list(&reference), "adv": Vec::<f64>::try_from(&adv).unwrap(),
        "mask": list(&mask), "eps_low": 0.2, "eps_high": 0.28, "dr_len": 16.0, "rewards": rewards, "g": 4});
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut child = Command::new(root.join(".venv/bin/python"))
        .args(["-c", NUMPY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (agg, name) in [
        (Aggregation::TokenMean, "token_mean"),
        (Aggregation::SequenceMean, "sequence_mean"),
        (Aggregation::DrGrpo, "dr_grpo"),
    ] {
        for beta in [0.0, 0.05] {
            let cfg = GrpoLossConfig {
                eps_low: 0.2,
                eps_high: 0.28,
                beta,
                aggregation: agg,
                dr_grpo_length: 16.0,
            };
            let ours = grpo_loss(&new, &old, Some(&reference), &adv, &mask, &cfg, None)
                .loss
                .double_value(&[]);
            let theirs = want[format!("{name}/{beta:?}")].as_f64().unwrap();
            // The losses reduce in f32, as training does.
            assert!(
                (ours - theirs).abs() < 1e-6,
                "{name} beta {beta}: ours {ours} numpy {theirs}"
            );
        }
    }
    let m = mask.to_kind(Kind::Double);
    let sft = sft_loss(&new, &mask, m.sum(Kind::Double).double_value(&[])).double_value(&[]);
    assert!((sft - want["sft"].as_f64().unwrap()).abs() < 1e-6);
    for (estimator, key) in [
        (AdvantageEstimator::ZScore, "adv_z"),
        (AdvantageEstimator::MeanOnly, "adv_mean"),
    ] {
        let ours = estimator.group_advantages(&rewards, 4, false);
        let theirs: Vec<Option<f64>> = serde_json::from_value(want[key].clone()).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            match (a, b) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{key}: {a} vs {b}"),
                (None, None) => {}
                _ => panic!("{key}: {ours:?} vs {theirs:?}"),
            }
        }
    }
}
