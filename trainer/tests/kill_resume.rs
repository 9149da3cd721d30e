//! A GRPO run killed (SIGKILL) during rollouts, gradient passes and checkpoint writes, then
//! resumed each time, ends with the metrics and weights of an uninterrupted run (issue 14
//! item 4). Phases are marked on stderr through the test-only `RECTHINKER_DEBUG_PHASES`
//! (trainer/src/train_common.rs).

mod fault_kit;

use fault_kit::*;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::{scratch, tiny_model};

/// A `rl --resume` run with phase markers on stderr: killed (SIGKILL) `delay` after the
/// first `target` marker that follows its first saved checkpoint, or left to finish.
/// Returns its stderr lines with the time each arrived, and whether it was killed.
fn rl_killed_in(
    cfg: &Path,
    target: &str,
    delay: Duration,
    env: &[(&str, &str)],
) -> (Vec<(Instant, String)>, bool) {
    let mut c = bin();
    c.args(["rl", "--config", s(cfg), "--resume"])
        .env("RECTHINKER_DEBUG_PHASES", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lines = Vec::new();
    let (mut saved, mut killed) = (false, false);
    while let Ok((t, line)) = rx.recv() {
        let phase = line.strip_prefix("phase: step ").map(|r| r.to_string());
        lines.push((t, line));
        let Some(phase) = phase else { continue };
        if phase.ends_with(" saved") {
            saved = true;
        } else if saved && phase.ends_with(&format!(" {target}")) {
            std::thread::sleep(delay);
            killed = child.kill().is_ok(); // SIGKILL
            break;
        }
    }
    let status = child.wait().unwrap();
    lines.extend(rx.iter());
    reader.join().unwrap();
    let text = || {
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !killed || status.success() {
        // It finished before the target phase came.
        assert!(status.success(), "{}", text());
        killed = false;
    }
    (lines, killed)
}

/// `phase: step N NAME` lines as (time, N, NAME).
fn phases(lines: &[(Instant, String)]) -> Vec<(Instant, usize, String)> {
    lines
        .iter()
        .filter_map(|(t, l)| {
            let (n, name) = l.strip_prefix("phase: step ")?.split_once(' ')?;
            Some((*t, n.parse().ok()?, name.to_string()))
        })
        .collect()
}

#[test]
fn grpo_killed_at_random_moments_resumes_exactly() {
    let dir = scratch("faults-kill");
    let steps = 10;
    // Step 4 poisons a gradient (skipped and counted), so the count must survive kills too.
    let env = [("RECTHINKER_DEBUG_NONFINITE", "grad@4")];
    let skip = "nonfinite = \"skip\"";
    let (a, b) = (
        grpo_config(&dir, "a", steps, 2, skip),
        grpo_config(&dir, "b", steps, 2, skip),
    );
    // The uninterrupted run, timing each phase (from its marker to the next one).
    let t = Instant::now();
    let (lines, _) = rl_killed_in(&a, "none", Duration::ZERO, &env);
    let total = t.elapsed();
    let p = phases(&lines);
    assert_eq!(p.len(), steps * 4, "{lines:?}");
    let mut took: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for w in p.windows(2) {
        took.entry(w[0].2.clone())
            .or_default()
            .push((w[1].0 - w[0].0).as_secs_f64());
    }
    let mean = |phase: &str| took[phase].iter().sum::<f64>() / took[phase].len() as f64;
    eprintln!(
        "faults: uninterrupted GRPO run of {steps} steps: {total:.1?}; mean rollout {:.3} s, \
         gradient pass {:.3} s, checkpoint write {:.3} s",
        mean("rollout"),
        mean("train"),
        mean("checkpoint")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261130);
    let mut landed: std::collections::BTreeMap<String, usize> = Default::default();
    let mut kills = 0;
    let mut runs = 0;
    let targets = ["rollout", "train", "checkpoint"];
    let mut k = 0;
    // Two kills per phase (more if one missed its phase), each followed by a resume; the
    // last resume runs to the end.
    let done = |landed: &std::collections::BTreeMap<String, usize>, kills: usize| {
        kills >= 6 && targets.iter().all(|t| landed.contains_key(*t))
    };
    loop {
        let missing = targets.iter().find(|t| !landed.contains_key(**t));
        let target = match (done(&landed, kills), missing) {
            (true, _) => "none",
            // Two kills aimed at each phase, then at any phase no kill has landed in yet.
            (false, Some(t)) if kills >= 6 => t,
            _ => targets[k % targets.len()],
        };
        k += 1;
        // A seeded delay into the phase: up to 40% of its mean duration in the uninterrupted
        // run (a kill that comes later lands in a later phase and counts there).
        let share = rng.random_range(0.0..0.4);
        let delay = match took.contains_key(target) {
            true => Duration::from_secs_f64(share * mean(target)),
            false => Duration::ZERO,
        };
        let (lines, killed) = rl_killed_in(&b, target, delay, &env);
        runs += 1;
        if !killed {
            break;
        }
        kills += 1;
        // Where it died: the last marker it printed (a checkpoint without `saved` after it
        // died during the write).
        let p = phases(&lines);
        let (_, step, last) = p.last().cloned().unwrap();
        let tmp_left = dir
            .join("b/checkpoints")
            .join(format!(".step-{step:06}.tmp"))
            .exists();
        eprintln!(
            "faults: kill {kills}: aimed at {target} +{delay:.0?}, died in step {step} {last}{}",
            if tmp_left {
                " (a half-written checkpoint left)"
            } else {
                ""
            }
        );
        *landed.entry(last).or_default() += 1;
        assert!(kills < steps, "the run does not progress: {lines:?}");
    }
    eprintln!("faults: {kills} kills, {runs} runs, landed in {landed:?}");
    for phase in targets {
        assert!(
            landed.get(phase).is_some_and(|&n| n > 0),
            "no kill during {phase}: {landed:?}"
        );
    }
    let (ra, rb) = (dir.join("a"), dir.join("b"));
    let (ma, mb) = (metrics(&ra), metrics(&rb));
    assert_eq!(ma.len(), steps);
    assert_eq!(ma, mb, "metrics after {kills} kills");
    assert!(
        ma.iter().all(|l| l["rows_trained"].as_u64() == Some(4)),
        "{ma:?}"
    );
    assert!(
        ma.iter().skip(1).all(|l| l["kl"].as_f64().unwrap() > 0.0),
        "{ma:?}"
    );
    assert_eq!(
        ma.iter()
            .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    );
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&ra, steps).join(f), &ck(&rb, steps).join(f)),
            "final {f} differs after {kills} kills"
        );
    }
    // Training moved the weights.
    let base = tensors(&tiny_model("qwen2").join("model.safetensors"));
    let last = tensors(&ck(&ra, steps).join("weights.safetensors"));
    assert!(base.iter().zip(&last).any(|((_, x), (_, y))| !x.equal(y)));
    // TensorBoard reads back exactly metrics.jsonl despite the torn event files.
    testkit::tensorboard::assert_tensorboard_matches_metrics(&rb);
}
